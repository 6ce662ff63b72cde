package migrate

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"

	"golang.org/x/sys/unix"

	"github.com/phaul/phaul/criu"
	"github.com/phaul/phaul/internal/pb"
	"github.com/phaul/phaul/internal/tty"
)

// TTYLogLimit bounds each terminal log the service writes (--tty=pty);
// beyond it the output is dropped.
const TTYLogLimit = 64 << 20

var ttyKey = regexp.MustCompile(`^tty\[[0-9a-f]{1,16}:[0-9a-f]{1,16}\]$`)

// terminals are the new ptys of one restore, one per external terminal of
// the source tree.
type terminals struct {
	masters []*os.File
	slaves  []*os.File
	sinks   []io.WriteCloser
	logs    []string // where each one's output goes
	recs    []*tty.Recording
}

// openTerminals makes a pty and its sink for each terminal the source
// declared external, in the migration's directory dir.
func openTerminals(terms []*pb.Terminal, mode tty.Mode, dir string) (*terminals, error) {
	t := &terminals{}
	for i, term := range terms {
		if !ttyKey.MatchString(term.Key) {
			t.close()
			return nil, fmt.Errorf("terminal key %q: not CRIU's tty[RDEV:DEV]", term.Key)
		}
		m, s, err := tty.Open()
		if err != nil {
			t.close()
			return nil, err
		}
		t.masters, t.slaves = append(t.masters, m), append(t.slaves, s)
		var sink io.WriteCloser
		var where string
		switch mode.Kind {
		case tty.ModeNull:
			sink, where = nopCloser{io.Discard}, os.DevNull
		case tty.ModeFile:
			where = mode.Path
			sink, err = os.OpenFile(where, os.O_WRONLY|os.O_CREATE|os.O_APPEND|unix.O_NOFOLLOW, 0o640)
		default:
			where = filepath.Join(dir, fmt.Sprintf("tty-%d.log", i))
			sink, err = os.OpenFile(where, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
		}
		if err != nil {
			t.close()
			return nil, fmt.Errorf("terminal %s (%s on the source): %w", term.Key, term.Path, err)
		}
		t.sinks, t.logs = append(t.sinks, sink), append(t.logs, where)
	}
	return t, nil
}

// inherit hands the slaves to CRIU under the terminals' keys.
func (t *terminals) inherit(terms []*pb.Terminal) []criu.InheritFile {
	var out []criu.InheritFile
	for i, term := range terms {
		out = append(out, criu.InheritFile{Key: term.Key, File: t.slaves[i]})
	}
	return out
}

// start records each pty once the restored tree holds its slave.
func (t *terminals) start() {
	for _, s := range t.slaves {
		s.Close()
	}
	t.slaves = nil
	for i, m := range t.masters {
		t.recs = append(t.recs, tty.Record(m, t.sinks[i], TTYLogLimit))
	}
	t.masters, t.sinks = nil, nil
}

// close releases what start did not hand over, and stops the recordings.
func (t *terminals) close() {
	if t == nil {
		return
	}
	for _, f := range t.slaves {
		f.Close()
	}
	for _, f := range t.masters {
		f.Close()
	}
	for _, w := range t.sinks {
		w.Close()
	}
	for _, r := range t.recs {
		r.Stop()
	}
	t.slaves, t.masters, t.sinks, t.recs = nil, nil, nil, nil
}

type nopCloser struct{ io.Writer }

func (nopCloser) Close() error { return nil }
