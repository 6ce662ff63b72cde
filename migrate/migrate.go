// Package migrate holds the state machines of a live migration: the
// source side (Migrate), the destination side (Destination, served by
// Server), their commit and rollback rules, and the report.
//
// One migration, as the messages of docs/protocol.md run:
//
//	source                                 destination
//	Hello{version, id}              --->   check version
//	                                <---   Welcome
//	Prepare{pid, options, cgroups}  --->   work dir, cgroup roots, CRIU page server
//	                                <---   Ready
//	pages stream (zstd)  ===========>     page server writes the pages
//	CRIU dump; at post-dump (tasks frozen, images written):
//	images stream ==================>     image files
//	ImagesSent                      --->   CRIU restore, tasks left stopped
//	                                <---   Restored{pid}
//	answer post-dump: success (CRIU kills the source tree)
//	Commit                          --->   SIGCONT the tree
//	                                <---   Done{pid}
//
// Until the source answers post-dump with success, any failure (a refusal,
// a timeout, a lost connection) answers it with failure: CRIU resumes the
// source tree, and the destination kills what it restored and removes its
// work directory. Between that answer and the destination receiving Commit
// only the destination holds the workload, stopped: if the connection is
// lost there it keeps the stopped copy and records it as in doubt instead
// of killing it (see docs/design.md).
//
// The package reaches CRIU through the small interfaces Checkpointer and
// Restorer, so that its logic can be tested with fakes.
package migrate

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"github.com/phaul/phaul/precheck"
	"os"
	"regexp"

	"github.com/phaul/phaul/criu"
	"github.com/phaul/phaul/internal/cli"
	"github.com/phaul/phaul/internal/pb"
)

// Checkpointer is what the source needs of CRIU.
type Checkpointer interface {
	Dump(ctx context.Context, r criu.Request) (*criu.DumpResult, error)
}

// PageServer is a running CRIU page server.
type PageServer interface {
	Wait(ctx context.Context) error
	Close() error
}

// Restorer is what the destination needs of CRIU.
type Restorer interface {
	StartPageServer(ctx context.Context, r criu.Request) (PageServer, error)
	Restore(ctx context.Context, r criu.Request) (*criu.RestoreResult, error)
}

// CRIU adapts a *criu.Client to Checkpointer and Restorer.
type CRIU struct{ *criu.Client }

// StartPageServer implements Restorer.
func (c CRIU) StartPageServer(ctx context.Context, r criu.Request) (PageServer, error) {
	return c.Client.StartPageServer(ctx, r)
}

// hostInfo describes this host for Hello, Welcome and the checks.
func hostInfo(criuVersion string) *pb.HostInfo {
	host, _ := os.Hostname()
	kernel, _ := criu.RunningKernel()
	return &pb.HostInfo{Hostname: host, Kernel: kernel.String(), CriuVersion: criuVersion, PhaulVersion: cli.PhaulVersion(),
		BootId: precheck.BootID()}
}

// NewID returns a new migration ID: 16 hex digits.
func NewID() string {
	var b [8]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

var idRE = regexp.MustCompile(`^[0-9a-f]{8,32}$`)

// validID accepts the IDs NewID makes (they name directories).
func validID(id string) error {
	if !idRE.MatchString(id) {
		return fmt.Errorf("bad migration id %q: want 8 to 32 lowercase hex digits", id)
	}
	return nil
}
