package migrate

import (
	"errors"
	"fmt"
	"strings"
)

// Error is a failed migration: the phase it failed in, where the workload
// is, and the cause.
type Error struct {
	Phase string // connect, checks, dump, transfer, restore, commit, resume
	// SourceRunning: the workload still runs on the source, unchanged
	// (the migration was rolled back or never froze it).
	SourceRunning bool
	// InDoubt: the source copy is gone but the destination has not
	// confirmed that its copy runs; it keeps it stopped, recorded as in
	// doubt, until resolved.
	InDoubt bool
	Err     error
}

func (e *Error) Error() string {
	var where string
	switch {
	case e.InDoubt:
		where = " (IN DOUBT: the source copy is gone and the destination has not confirmed that its copy runs; it keeps it stopped until the migration is resolved)"
	case e.SourceRunning:
		where = " (the workload still runs on the source)"
	}
	return fmt.Sprintf("%s: %v%s", e.Phase, e.Err, where)
}

func (e *Error) Unwrap() error { return e.Err }

// ErrInDoubt is matched (errors.Is) by an *Error with InDoubt set.
var ErrInDoubt = errors.New("migration in doubt")

func (e *Error) Is(target error) bool { return target == ErrInDoubt && e.InDoubt }

// RemoteError is a failure the destination reported.
type RemoteError struct {
	Phase     string
	Message   string
	CRIULines []string
}

func (e *RemoteError) Error() string {
	s := "destination: " + e.Phase + ": " + e.Message
	if len(e.CRIULines) > 0 && !strings.Contains(e.Message, e.CRIULines[0]) {
		s += ": " + strings.Join(e.CRIULines, "; ")
	}
	return s
}

// ErrProtocol is matched by violations of the protocol by the peer.
var ErrProtocol = errors.New("protocol error")
