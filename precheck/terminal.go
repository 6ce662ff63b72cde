package precheck

import (
	"fmt"
	"strings"

	"github.com/phaul/phaul/internal/pb"
)

// JudgeTerminals is the "terminals" check, judged on the source: the
// terminals the tree uses but does not own (terms, from tty.External) and
// what the destination will connect them to (mode, --tty). It returns
// nothing when the check is skipped.
func JudgeTerminals(terms []*pb.Terminal, mode string, o Options) []*pb.Verdict {
	if o.skipped("terminals") {
		return nil
	}
	if len(terms) == 0 {
		return []*pb.Verdict{pass("terminals", "the tree uses no terminal from outside it")}
	}
	var where string
	switch {
	case mode == "" || mode == "pty":
		where = "a new pty whose output the service logs in the migration's directory (--tty=pty)"
	case mode == "null":
		where = "a new pty whose output is dropped (--tty=null)"
	default:
		where = "a new pty whose output is appended to " + strings.TrimPrefix(mode, "file:") + " on the destination (--tty=" + mode + ")"
	}
	var items []string
	ctty := false
	for _, t := range terms {
		item := fmt.Sprintf("%s (%s)", t.Path, strings.Join(t.Users, ", "))
		if t.Ctty {
			item += ": the controlling terminal of a session outside the tree"
			ctty = true
		}
		items = append(items, item)
	}
	detail := fmt.Sprintf("%d terminal(s) from outside the tree; on the destination each becomes %s", len(terms), where)
	if ctty {
		return []*pb.Verdict{warn("terminals", detail+"; a controlling terminal is restored as an ordinary one (no job control, no SIGHUP from it)", items...)}
	}
	v := pass("terminals", detail)
	v.Items = items
	return []*pb.Verdict{v}
}
