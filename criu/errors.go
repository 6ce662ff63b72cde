package criu

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"strings"
	"syscall"
)

// ErrNotFound is returned when no CRIU binary can be found.
var ErrNotFound = errors.New("criu not found: run `make deps` (installs CRIU 4.2 under /opt/phaul/criu) or set PHAUL_CRIU to a criu binary")

// Error is a failed CRIU operation. It carries what CRIU said about it: the
// message and errno of its response, the Error lines of its log, and its
// standard error.
type Error struct {
	Op     string        // "dump", "restore", "page-server", ...
	Msg    string        // cr_errmsg from the response, if any
	Errno  syscall.Errno // cr_errno from the response, if any
	Lines  []string      // "Error (file:line): ..." lines of CRIU's log, without timestamps
	Log    string        // path of CRIU's log for this operation, if one was written
	Stderr string        // what CRIU wrote to its standard error
	Err    error         // the underlying cause on our side: a refused notification, a cancelled context, an I/O error
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("criu ")
	b.WriteString(e.Op)
	switch {
	case e.Err != nil:
		fmt.Fprintf(&b, ": %v", e.Err)
	case e.Msg != "" && len(e.Lines) == 0:
		// CRIU's errmsg is the first error it logged; the log lines,
		// when there are any, say it better.
		fmt.Fprintf(&b, ": %s", strings.TrimSpace(e.Msg))
	case len(e.Lines) == 0:
		b.WriteString(": failed")
	}
	if e.Errno != 0 {
		fmt.Fprintf(&b, " (errno %d: %v)", int(e.Errno), e.Errno)
	}
	if len(e.Lines) > 0 {
		b.WriteString(": ")
		b.WriteString(strings.Join(e.Lines, "; "))
	} else if s := strings.TrimSpace(e.Stderr); s != "" {
		b.WriteString(": ")
		b.WriteString(lastLines(s, 5))
	}
	if e.Log != "" {
		fmt.Fprintf(&b, " (log: %s)", e.Log)
	}
	return b.String()
}

func (e *Error) Unwrap() error { return e.Err }

func lastLines(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "; ")
}

// maxErrorLines bounds how many of CRIU's error lines an Error keeps.
const maxErrorLines = 12

// ErrorLines returns the "Error (...)" lines of a CRIU log, with the
// timestamp prefix removed, at most maxErrorLines of them (the first ones:
// CRIU logs the cause first and "Dumping FAILED" last, so the last one is
// kept too when there are more).
func ErrorLines(log string) []string {
	var out []string
	var last string
	sc := bufio.NewScanner(strings.NewReader(log))
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		line := sc.Text()
		// "(00.012345) Error (criu/cr-dump.c:2099): Dumping FAILED."
		rest := line
		if strings.HasPrefix(rest, "(") {
			if i := strings.Index(rest, ") "); i > 0 {
				rest = rest[i+2:]
			}
		}
		// Lines of a PID-prefixed log look like "pie: 123: Error (...)".
		i := strings.Index(rest, "Error (")
		if i < 0 {
			continue
		}
		if i > 0 && !strings.HasSuffix(strings.TrimSpace(rest[:i]), ":") {
			continue
		}
		rest = strings.TrimSpace(rest)
		if isNoise(rest) {
			continue
		}
		if len(out) < maxErrorLines-1 {
			out = append(out, rest)
		} else {
			last = rest
		}
	}
	if last != "" {
		out = append(out, last)
	}
	return out
}

// readErrorLines reads the error lines of the log at path; a missing log
// yields none.
func readErrorLines(path string) []string {
	if path == "" {
		return nil
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	return ErrorLines(string(data))
}

// noise are error lines CRIU logs on every run on some machines without
// consequence: root without CAP_SYS_RESOURCE cannot raise RLIMIT_NOFILE.
var noise = []string{"Can't setup RLIMIT_NOFILE for self"}

func isNoise(line string) bool {
	for _, n := range noise {
		if strings.Contains(line, n) {
			return true
		}
	}
	return false
}
