package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/phaul/phaul/internal/cli"
	"github.com/phaul/phaul/internal/testutil"
	"github.com/phaul/phaul/postcopy"
)

func TestMain(m *testing.M) {
	postcopy.RunProbeIfAsked() // check-host's lazy-pages self-test runs this binary as its probe
	os.Exit(m.Run())
}

func runPhaul(t *testing.T, args ...string) (string, string, error) {
	t.Helper()
	var out, errb bytes.Buffer
	err := run(context.Background(), args, &out, &errb)
	return out.String(), errb.String(), err
}

func TestUsage(t *testing.T) {
	tests := []struct {
		args []string
		code int
		want string // in the error or on stdout
	}{
		{nil, cli.ExitUsage, "no command given"},
		{[]string{"frobnicate"}, cli.ExitUsage, `unknown command "frobnicate"`},
		{[]string{"help"}, cli.ExitOK, "check-host"},
		{[]string{"dump", "--help"}, cli.ExitOK, "--leave-running"},
		{[]string{"help", "restore"}, cli.ExitOK, "Usage: phaul restore"},
		{[]string{"dump", "12"}, cli.ExitUsage, "needs PID and DIR"},
		{[]string{"dump", "abc", "/tmp/x"}, cli.ExitUsage, `bad PID "abc"`},
		{[]string{"dump", "--no-such-flag", "1", "x"}, cli.ExitUsage, "unknown flag"},
		{[]string{"dump", "1", "/tmp/x"}, cli.ExitFailure, "init process"},
		{[]string{"dump", strconv.Itoa(os.Getpid()), "/tmp/x"}, cli.ExitFailure, "phaul itself"},
		{[]string{"version", "extra"}, cli.ExitUsage, "no arguments"},
		{[]string{"migrate", "1"}, cli.ExitUsage, "needs PID and HOST:PORT"},
		{[]string{"check", "1"}, cli.ExitUsage, "needs PID and HOST:PORT"},
		{[]string{"check", "1", "h:1"}, cli.ExitFailure, "init process"},
		{[]string{"migrate", "--skip-check", "nope", strconv.Itoa(os.Getppid()), "h:1"}, cli.ExitFailure, "ancestor"},
		{[]string{"migrate", "x", "h:1"}, cli.ExitUsage, `bad PID "x"`},
		{[]string{"migrate", "1", "h:1"}, cli.ExitFailure, "init process"},
		{[]string{"migrate", strconv.Itoa(os.Getpid()), "h:1"}, cli.ExitFailure, "phaul itself"},
		{[]string{"migrate", strconv.Itoa(os.Getppid()), "h:1"}, cli.ExitFailure, "ancestor of phaul"},
		{[]string{"migrate", "999999999", "h:1"}, cli.ExitFailure, "no such process"},
		{[]string{"migrate", "--help"}, cli.ExitOK, "in doubt"},
		{[]string{"certs"}, cli.ExitUsage, "certs needs DIR"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			out, _, err := runPhaul(t, tt.args...)
			if got := cli.ExitCode(err); got != tt.code {
				t.Errorf("exit %d, want %d (err %v)", got, tt.code, err)
			}
			text := out
			if err != nil {
				text += err.Error()
			}
			if !strings.Contains(text, tt.want) {
				t.Errorf("output %q / error %v does not contain %q", out, err, tt.want)
			}
		})
	}
}

func TestCheckHostJSON(t *testing.T) {
	testutil.CRIU(t)
	out, _, err := runPhaul(t, "check-host", "--json")
	if err != nil {
		t.Fatal(err)
	}
	var r map[string]any
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, out)
	}
	for _, k := range []string{"criu_path", "criu_version", "kernel", "min_criu_for_kernel", "hw_breakpoints", "mem_track", "lazy_pages", "cgroups"} {
		if _, ok := r[k]; !ok {
			t.Errorf("check-host --json lacks %q", k)
		}
	}
	// The self-test ran: where CRIU finds userfaultfd (these machines), a
	// real lazy restore works.
	if r["uffd"] == true && r["lazy_pages"] != true {
		t.Errorf("userfaultfd available but the lazy self-test failed: %v", r["lazy_pages_detail"])
	}
}

func TestLocalDumpRestoreCommands(t *testing.T) {
	testutil.CRIU(t)
	w := testutil.StartWorkload(t, testutil.WorkloadOptions{})
	dir := filepath.Join(t.TempDir(), "img")
	pid := w.Cmd.Process.Pid
	out, _, err := runPhaul(t, "dump", "--json", strconv.Itoa(pid), dir)
	if err != nil {
		t.Fatalf("phaul dump: %v", err)
	}
	checkJSON(t, "local", []byte(out))
	st, _ := testutil.ReadState(w.State)
	if err := testutil.WaitReaped(pid, 10e9); err != nil {
		t.Fatal(err)
	}
	out, _, err = runPhaul(t, "restore", "--json", dir)
	if err != nil {
		t.Fatalf("phaul restore: %v", err)
	}
	checkJSON(t, "local", []byte(out))
	var r struct{ Pid int }
	if err := json.Unmarshal([]byte(out), &r); err != nil || r.Pid != pid {
		t.Fatalf("restore --json: %q (%v), want pid %d", out, err, pid)
	}
	if _, err := testutil.WaitCount(w.State, st.Count+3, 10e9); err != nil {
		t.Fatal(err)
	}
	// A second restore of the same images fails with CRIU's reason: the
	// PID is taken by the first.
	_, _, err = runPhaul(t, "restore", dir)
	if err == nil || !strings.Contains(err.Error(), "Error (criu/") {
		t.Fatalf("second restore: want CRIU's error lines, got %v", err)
	}
	if errors.Is(err, context.Canceled) {
		t.Fatal(err)
	}
}
