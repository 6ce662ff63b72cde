package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/phaul/phaul/internal/testutil"
)

// install runs `make install` into a scratch prefix and returns it.
func install(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	installInto(t, root)
	return root
}

// installInto runs `make install` with PREFIX root/usr and SYSCONFDIR
// root/etc.
func installInto(t *testing.T, root string) {
	t.Helper()
	cmd := exec.Command("make", "-s", "install", "PREFIX="+root+"/usr", "SYSCONFDIR="+root+"/etc")
	cmd.Dir = filepath.Join("..", "..")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("make install: %v\n%s", err, out)
	}
}

// TestInstalledUnitVerifies: the unit `make install` writes passes
// systemd-analyze verify (which also checks that ExecStart exists).
func TestInstalledUnitVerifies(t *testing.T) {
	if _, err := exec.LookPath("systemd-analyze"); err != nil {
		testutil.SkipOrFail(t, "no systemd-analyze: %v", err)
	}
	root := install(t)
	unit := filepath.Join(root, "usr/lib/systemd/system/phaul-service.service")
	out, err := exec.Command("systemd-analyze", "verify", unit).CombinedOutput()
	if err != nil || strings.Contains(string(out), "phaul-service.service:") {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
	data, _ := os.ReadFile(unit)
	for _, want := range []string{"Type=notify", "ExecStart=" + root + "/usr/bin/phaul-service ", "ExecReload=", "StateDirectory=phaul", "LogsDirectory=phaul", "--log-dir /var/log/phaul", "KillMode=process"} {
		if !strings.Contains(string(data), want) {
			t.Errorf("unit lacks %q", want)
		}
	}
	if _, err := os.Stat(filepath.Join(root, "etc/phaul/phaul-service.conf")); err != nil {
		t.Errorf("no example config installed: %v", err)
	}
	// A second install keeps an edited config.
	os.WriteFile(filepath.Join(root, "etc/phaul/phaul-service.conf"), []byte("listen = :9\n"), 0o644)
	installInto(t, root)
	if data, _ := os.ReadFile(filepath.Join(root, "etc/phaul/phaul-service.conf")); string(data) != "listen = :9\n" {
		t.Errorf("make install overwrote the config: %q", data)
	}
}

// notJSON marks a log line that did not parse.
const notJSON = "NOT JSON: "

// TestServiceNotifiesSystemd starts the installed phaul-service the way
// the unit does, with a notify socket and a journal stream of the test's:
// READY=1 once it listens, JSON log lines, a reload on SIGHUP, STOPPING=1
// and exit 0 on SIGTERM.
func TestServiceNotifiesSystemd(t *testing.T) {
	testutil.CRIU(t)
	root := install(t)
	unit, _ := os.ReadFile(filepath.Join(root, "usr/lib/systemd/system/phaul-service.service"))
	var argv []string
	for _, line := range strings.Split(string(unit), "\n") {
		if v, ok := strings.CutPrefix(line, "ExecStart="); ok {
			argv = strings.Fields(v)
		}
	}
	if len(argv) == 0 {
		t.Fatal("no ExecStart in the unit")
	}
	tlsDir := filepath.Join(t.TempDir(), "tls")
	if out, err := exec.Command(filepath.Join(root, "usr/bin/phaul"), "certs", tlsDir).CombinedOutput(); err != nil {
		t.Fatalf("phaul certs: %v\n%s", err, out)
	}
	sock := filepath.Join(t.TempDir(), "notify")
	ln, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	msgs := make(chan string, 16)
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := ln.Read(buf)
			if err != nil {
				close(msgs)
				return
			}
			msgs <- string(buf[:n])
		}
	}()
	// The config file names what the unit leaves to it.
	conf := filepath.Join(t.TempDir(), "phaul-service.conf")
	os.WriteFile(conf, []byte("listen = 127.0.0.1:0\ntls-dir = "+tlsDir+"\n"), 0o644)
	args := append(argv[1:], "--config", conf, "--work-dir", t.TempDir(), "--log-dir", t.TempDir())
	cmd := exec.Command(argv[0], args...)
	// stderr is "the journal": JOURNAL_STREAM names it, as systemd does.
	stderr, journal, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	unix.Fstat(int(journal.Fd()), &st)
	cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+sock, fmt.Sprintf("JOURNAL_STREAM=%d:%d", st.Dev, st.Ino))
	cmd.Stderr = journal
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	journal.Close()
	logs := make(chan string, 64)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			var m map[string]any
			if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
				logs <- notJSON + sc.Text()
				continue
			}
			logs <- sc.Text()
		}
		close(logs)
	}()
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	expect := func(what string, ch <-chan string, want string) {
		t.Helper()
		deadline := time.After(20 * time.Second)
		for {
			select {
			case m, ok := <-ch:
				if !ok {
					t.Fatalf("%s: channel closed before %q", what, want)
				}
				if strings.HasPrefix(m, notJSON) {
					t.Errorf("%s: a line in the journal that is not JSON: %q", what, m)
				}
				if strings.Contains(m, want) {
					return
				}
			case <-deadline:
				t.Fatalf("%s: no %q", what, want)
			}
		}
	}
	expect("notify", msgs, "READY=1")
	cmd.Process.Signal(syscall.SIGHUP)
	expect("log", logs, "certificates reloaded")
	if !testutil.Alive(cmd.Process.Pid) {
		t.Fatal("SIGHUP stopped the service")
	}
	cmd.Process.Signal(syscall.SIGTERM)
	expect("notify", msgs, "STOPPING=1")
	if err := cmd.Wait(); err != nil {
		t.Errorf("exit after SIGTERM: %v", err)
	}
	for m := range logs { // until EOF: the service has exited
		if strings.HasPrefix(m, notJSON) {
			t.Errorf("a line in the journal that is not JSON: %q", m)
		}
	}
}
