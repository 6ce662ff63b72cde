package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/phaul/phaul/internal/cli"
	"github.com/phaul/phaul/internal/testutil"
)

// TestBashCompletion loads `phaul completion bash` into bash and asks it
// to complete command lines, as bash does on TAB.
func TestBashCompletion(t *testing.T) {
	if _, err := exec.LookPath("bash"); err != nil {
		testutil.SkipOrFail(t, "no bash")
	}
	out, _, err := runPhaul(t, "completion", "bash")
	if err != nil {
		t.Fatal(err)
	}
	script := filepath.Join(t.TempDir(), "phaul.bash")
	os.WriteFile(script, []byte(out), 0o644)
	tests := []struct {
		words   []string // the last one is being completed
		want    []string // all of them offered
		notWant []string
	}{
		{[]string{"mi"}, []string{"migrate"}, nil},
		{[]string{"c"}, []string{"certs", "check", "check-host", "completion"}, []string{"migrate"}},
		{[]string{"migrate", "--man"}, []string{"--manage-cgroups"}, nil},
		{[]string{"migrate", "--manage-cgroups", "s"}, []string{"soft", "strict"}, []string{"none"}},
		{[]string{"check", "--skip-check", "fi"}, []string{"files"}, nil},
		{[]string{"migrate", "--tty", ""}, []string{"pty", "null", "file:"}, nil},
		{[]string{"migrate", "--tls-dir", "/et"}, []string{"/etc"}, nil},
		{[]string{"status", "--"}, []string{"--json", "--tls-dir", "--log-format"}, []string{"--tty"}},
		{[]string{"migrate", "--timeout", "5s", "1"}, []string{"1"}, nil}, // a PID
		{[]string{"migrate", "--json", "1", "x"}, nil, []string{"x"}},     // HOST:PORT: nothing to offer
		{[]string{"restore", "/et"}, []string{"/etc"}, nil},               // DIR
		{[]string{"completion", ""}, []string{"bash"}, nil},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.words, " "), func(t *testing.T) {
			var quoted []string
			for _, w := range append([]string{"phaul"}, tt.words...) {
				quoted = append(quoted, "'"+w+"'")
			}
			prog := "source " + script + "\nCOMP_WORDS=(" + strings.Join(quoted, " ") + ")\nCOMP_CWORD=" +
				strconv.Itoa(len(tt.words)) + "\n_phaul\nprintf '%s\\n' \"${COMPREPLY[@]}\"\n"
			cmd := exec.Command("bash", "-c", prog)
			var o, e bytes.Buffer
			cmd.Stdout, cmd.Stderr = &o, &e
			if err := cmd.Run(); err != nil || e.Len() > 0 {
				t.Fatalf("bash: %v\n%s", err, e.String())
			}
			got := strings.Fields(o.String())
			has := map[string]bool{}
			for _, g := range got {
				has[g] = true
			}
			for _, w := range tt.want {
				if !has[w] {
					t.Errorf("offered %q, want %q among them", got, w)
				}
			}
			for _, w := range tt.notWant {
				if has[w] {
					t.Errorf("offered %q, did not want %q", got, w)
				}
			}
			if tt.want == nil && len(got) != 0 {
				t.Errorf("offered %q, want nothing", got)
			}
		})
	}
}

// TestEveryCommandHelp: each command's --help has its flags, the common
// flags and its exit statuses, and exits 0.
func TestEveryCommandHelp(t *testing.T) {
	for _, c := range commands {
		t.Run(c.Name, func(t *testing.T) {
			out, _, err := runPhaul(t, c.Name, "--help")
			if err != nil {
				t.Fatalf("--help: %v", err)
			}
			for _, want := range []string{"Usage: phaul " + c.Name, c.Summary, "Common flags:", "--log-format", "Exit status:\n  0  ", "\n  2  bad command line"} {
				if !strings.Contains(out, want) {
					t.Errorf("--help lacks %q:\n%s", want, out)
				}
			}
			if c.Exit == "" {
				t.Error("no exit statuses (cli.Command.Exit)")
			}
		})
	}
	if code := cli.ExitCode(func() error { _, _, err := runPhaul(t, "completion", "zsh"); return err }()); code != cli.ExitUsage {
		t.Errorf("completion zsh: exit %d, want %d", code, cli.ExitUsage)
	}
}
