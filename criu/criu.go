// Package criu drives CRIU (Checkpoint/Restore In Userspace) over its RPC
// interface, `criu swrk`.
//
// A Client starts one `criu swrk` child per operation on one end of a
// SOCK_SEQPACKET socketpair and exchanges the protobuf messages of
// github.com/checkpoint-restore/go-criu/v7/rpc with it: one message per
// packet. Notifications that CRIU sends during an operation (pre-dump,
// post-dump, post-restore, ...) are handed to a callback that may refuse
// them; refusing post-dump is how a migration rolls back, because CRIU then
// resumes the dumped tasks. File descriptors travel both ways: the caller's
// files become the child's fds 4, 5, ... (see Request), and an fd CRIU sends
// with a notification (orphan-pts-master) arrives in Notification.File.
//
// Failures are returned as *Error, which carries CRIU's own error lines from
// its log. Cancelling the context passed to an operation closes the RPC
// socket, which makes CRIU abort at its next exchange (a dump resumes its
// tasks, a restore kills what it restored); if CRIU has not exited after
// Client.KillGrace it is killed.
package criu

import (
	"fmt"
	"strconv"
	"strings"
)

// Version is a CRIU version, as reported by CRIU's VERSION request.
type Version struct {
	Major, Minor, Sublevel int
	GitID                  string
}

// ParseVersion parses "4.2", "4.2.1" or "Version: 4.2.1".
func ParseVersion(s string) (Version, error) {
	s = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(s), "Version:"))
	parts := strings.Split(s, ".")
	if len(parts) < 2 || len(parts) > 3 {
		return Version{}, fmt.Errorf("parse criu version %q: want MAJOR.MINOR[.SUBLEVEL]", s)
	}
	var nums [3]int
	for i, p := range parts {
		n, err := strconv.Atoi(p)
		if err != nil || n < 0 {
			return Version{}, fmt.Errorf("parse criu version %q: bad number %q", s, p)
		}
		nums[i] = n
	}
	return Version{Major: nums[0], Minor: nums[1], Sublevel: nums[2]}, nil
}

func (v Version) String() string {
	return fmt.Sprintf("%d.%d.%d", v.Major, v.Minor, v.Sublevel)
}

// Less reports whether v is older than w (the git id is not compared).
func (v Version) Less(w Version) bool {
	if v.Major != w.Major {
		return v.Major < w.Major
	}
	if v.Minor != w.Minor {
		return v.Minor < w.Minor
	}
	return v.Sublevel < w.Sublevel
}
