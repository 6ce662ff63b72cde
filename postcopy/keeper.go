package postcopy

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/phaul/phaul/internal/atomicfile"
	"github.com/phaul/phaul/internal/proc"
)

// The keeper enforces the lease on the destination. It is a process of
// its own, not a goroutine of the service, so that the copy dies when
// the lease ends whatever happens to the service: killed (its command
// pipe ends), stopped (no extension comes), or slow. It kills the copy at
// the lease's end, or as soon as its command pipe ends, unless the copy
// was committed first; it writes what it decided to its record before it
// answers, and the service asks it rather than deciding itself, so that a
// commit and an expiry can never both win.
//
// Commands, one per line on its fd 3: "extend T" (the lease now ends at
// T, lease clock), "target PID START" (the copy's root, once restored),
// "commit" (the source has committed: stop guarding). Answers, one line
// on its fd 4, to "commit" or at a kill: "committed", or "killed WHY".

// Keeper states, in its record.
const (
	KeeperLeased    = "leased"
	KeeperCommitted = "committed"
	KeeperKilled    = "killed"
)

// KeeperRecord is the keeper's record on disk.
type KeeperRecord struct {
	State string `json:"state"`
	Why   string `json:"why,omitempty"`
	Pid   int    `json:"pid,omitempty"`
	Start uint64 `json:"pid_start,omitempty"`
}

// ReadKeeperRecord reads a keeper's record.
func ReadKeeperRecord(path string) (KeeperRecord, error) {
	var r KeeperRecord
	b, err := os.ReadFile(path)
	if err != nil {
		return r, err
	}
	return r, json.Unmarshal(b, &r)
}

const keeperEnv = "PHAUL_LEASE_KEEPER" // the record's path

// RunKeeperIfAsked runs the keeper and exits if this process was started
// as one (StartKeeper); otherwise it returns at once.
func RunKeeperIfAsked() {
	path := os.Getenv(keeperEnv)
	if path == "" {
		return
	}
	k := &keeper{record: path, rec: KeeperRecord{State: KeeperLeased}}
	if err := k.run(os.NewFile(3, "commands"), os.NewFile(4, "answers")); err != nil {
		fmt.Fprintln(os.Stderr, "phaul lease keeper:", err)
		os.Exit(1)
	}
	os.Exit(0)
}

// Keeper is the service's handle on a keeper process.
type Keeper struct {
	cmd    *exec.Cmd
	w      io.WriteCloser
	lines  chan string   // its answers
	killed chan struct{} // closed at its first "killed"
	done   chan struct{}
}

// StartKeeper starts exe (a program that calls RunKeeperIfAsked) as the
// keeper of a lease that ends at expiry (lease clock), recording to
// record. The keeper holds the files of hold open until it is done: the
// service's end of the lazy-pages daemon's socket, so that the daemon
// (whose userfaultfds, closed, would let the copy's missing pages fill
// with zeros) outlives the copy whatever happens to the service.
func StartKeeper(exe, record string, expiry int64, hold ...*os.File) (*Keeper, error) {
	if err := writeRecord(record, KeeperRecord{State: KeeperLeased}); err != nil {
		return nil, fmt.Errorf("lease keeper: %w", err)
	}
	cr, cw, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	ar, aw, err := os.Pipe()
	if err != nil {
		cr.Close()
		cw.Close()
		return nil, err
	}
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), keeperEnv+"="+record)
	cmd.ExtraFiles = append([]*os.File{cr, aw}, hold...)
	cmd.Stderr = os.Stderr
	// Its own process group: a signal meant for the service is not its.
	cmd.SysProcAttr = &unix.SysProcAttr{Setpgid: true}
	err = cmd.Start()
	cr.Close()
	aw.Close()
	if err != nil {
		cw.Close()
		ar.Close()
		return nil, fmt.Errorf("lease keeper: %w", err)
	}
	k := &Keeper{cmd: cmd, w: cw, lines: make(chan string, 8), killed: make(chan struct{}), done: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		close(k.done)
	}()
	go k.read(ar)
	if err := k.Extend(expiry); err != nil {
		return nil, err
	}
	return k, nil
}

// Extend moves the lease's end to expiry (lease clock).
func (k *Keeper) Extend(expiry int64) error { return k.say("extend %d", expiry) }

// Target names the copy to kill: its root and the root's start time.
func (k *Keeper) Target(pid int, start uint64) error { return k.say("target %d %d", pid, start) }

// Commit asks the keeper to stop guarding the copy: nil when it did
// (recorded "committed"), an error saying why it killed the copy instead.
func (k *Keeper) Commit() error {
	if err := k.say("commit"); err != nil {
		return err
	}
	return k.answer()
}

// Killed returns the keeper's answer once it has killed the copy (or
// exited): the reason. It blocks until then.
func (k *Keeper) Killed() error { return k.answer() }

// Dead is closed once the keeper has killed the copy (or exited).
func (k *Keeper) Dead() <-chan struct{} { return k.killed }

// read reads the keeper's answers.
func (k *Keeper) read(r io.ReadCloser) {
	defer r.Close()
	br := bufio.NewReader(r)
	var once sync.Once
	dead := func() { once.Do(func() { close(k.killed) }) }
	defer dead()
	defer close(k.lines)
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return
		}
		line = strings.TrimSpace(line)
		if strings.HasPrefix(line, KeeperKilled) {
			dead()
		}
		k.lines <- line
	}
}

// Done is closed when the keeper has exited.
func (k *Keeper) Done() <-chan struct{} { return k.done }

// Close ends the command pipe: a keeper that has not committed kills the
// copy then. It waits for the keeper to exit.
func (k *Keeper) Close() {
	k.w.Close()
	<-k.done
}

func (k *Keeper) say(format string, args ...any) error {
	if _, err := fmt.Fprintf(k.w, format+"\n", args...); err != nil {
		return fmt.Errorf("lease keeper: %w", err)
	}
	return nil
}

func (k *Keeper) answer() error {
	line, ok := <-k.lines
	switch {
	case !ok:
		return errors.New("lease keeper: gone")
	case line == KeeperCommitted:
		return nil
	case strings.HasPrefix(line, KeeperKilled):
		return &KilledError{Why: strings.TrimSpace(strings.TrimPrefix(line, KeeperKilled))}
	}
	return fmt.Errorf("lease keeper: answered %q", line)
}

// KilledError says the keeper killed the copy, and why.
type KilledError struct{ Why string }

func (e *KilledError) Error() string { return "the copy was killed: " + e.Why }

// keeper is the keeper process's state.
type keeper struct {
	record string
	rec    KeeperRecord
	expiry int64
}

type command struct {
	verb string
	args []int64
	err  error // the pipe ended
}

func (k *keeper) run(commands io.Reader, answers io.Writer) error {
	cmds := make(chan command)
	go readCommands(commands, cmds)
	// The lease's first end comes first (StartKeeper's Extend): no timer
	// runs before it.
	if c := <-cmds; c.err != nil || c.verb != "extend" {
		return k.kill(answers, fmt.Sprintf("the lease was not given (%q, %v)", c.verb, c.err))
	} else {
		k.expiry = c.args[0]
	}
	timer := time.NewTimer(time.Hour)
	for {
		var expired <-chan time.Time
		if k.rec.State == KeeperLeased {
			timer.Reset(max(time.Duration(k.expiry-Now()), 0))
			expired = timer.C
		}
		select {
		case <-expired:
			if k.expiry <= Now() {
				if err := k.kill(answers, "the lease ended (the source was not heard from in time)"); err != nil {
					return err
				}
			}
		case c := <-cmds:
			if done, err := k.do(c, answers); done || err != nil {
				return err
			}
		}
	}
}

// do carries out a command; done: the keeper's work is over. After a
// kill it stays until its commands end, to kill a copy named late and to
// answer a late commit.
func (k *keeper) do(c command, answers io.Writer) (done bool, err error) {
	switch {
	case c.err != nil && k.rec.State == KeeperLeased:
		return true, k.kill(answers, "the service let go of the lease ("+c.err.Error()+")")
	case c.err != nil:
		return true, nil
	case c.verb == "extend":
		k.expiry = max(k.expiry, c.args[0])
	case c.verb == "target":
		k.rec.Pid, k.rec.Start = int(c.args[0]), uint64(c.args[1])
		if k.rec.State == KeeperKilled {
			return false, k.kill(answers, k.rec.Why)
		}
		if err := writeRecord(k.record, k.rec); err != nil {
			return false, k.kill(answers, "cannot record the copy: "+err.Error())
		}
	case c.verb == "commit" && k.rec.State == KeeperLeased:
		k.rec.State = KeeperCommitted
		if err := writeRecord(k.record, k.rec); err != nil {
			return false, k.kill(answers, "cannot record the commit: "+err.Error())
		}
		_, err := fmt.Fprintln(answers, KeeperCommitted)
		return true, err
	case c.verb == "commit":
		_, err := fmt.Fprintln(answers, KeeperKilled, k.rec.Why)
		return false, err
	}
	return false, nil
}

func readCommands(r io.Reader, out chan<- command) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		c := command{}
		if len(f) > 0 {
			c.verb = f[0]
		}
		for _, a := range f[1:] {
			n, err := strconv.ParseInt(a, 10, 64)
			if err != nil {
				c.err = fmt.Errorf("bad command %q", sc.Text())
			}
			c.args = append(c.args, n)
		}
		want := map[string]int{"extend": 1, "target": 2, "commit": 0}
		if n, ok := want[c.verb]; c.err == nil && (!ok || len(c.args) != n) {
			c.err = fmt.Errorf("bad command %q", sc.Text())
		}
		out <- c
		if c.err != nil {
			return
		}
	}
	err := sc.Err()
	if err == nil {
		err = errors.New("its commands ended")
	}
	out <- command{err: err}
}

// kill kills the copy, records it, and says so.
func (k *keeper) kill(answers io.Writer, why string) error {
	var kerr error
	if k.rec.Pid > 0 {
		kerr = stopThenKill(k.rec.Pid, k.rec.Start)
	}
	k.rec.State, k.rec.Why = KeeperKilled, why
	if kerr != nil {
		k.rec.Why += "; " + kerr.Error()
	}
	if err := writeRecord(k.record, k.rec); err != nil {
		return errors.Join(kerr, err)
	}
	_, _ = fmt.Fprintln(answers, KeeperKilled, k.rec.Why)
	return kerr
}

// stopThenKill stops every task of the tree of pid (while it is the
// process that started at start) until no new one appears, so that none
// forks away, then kills them all and waits until the root is gone.
func stopThenKill(pid int, start uint64) error {
	if !proc.Same(pid, start) {
		return nil
	}
	seen := map[int]bool{}
	for {
		grew := false
		for _, p := range proc.Tree(pid) {
			if p > 1 && !seen[p] {
				seen[p], grew = true, true
				_ = unix.Kill(p, unix.SIGSTOP)
			}
		}
		if !grew {
			break
		}
	}
	for p := range seen {
		_ = unix.Kill(p, unix.SIGKILL)
	}
	for deadline := time.Now().Add(5 * time.Second); proc.Same(pid, start); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			return fmt.Errorf("pid %d does not die", pid)
		}
	}
	return nil
}

func writeRecord(path string, r KeeperRecord) error {
	return atomicfile.Write(path, true, func(f *os.File) error { return json.NewEncoder(f).Encode(r) })
}
