package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
)

func newFlags() (*pflag.FlagSet, *string, *string, *time.Duration, *int, *bool) {
	fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
	listen := fs.String("listen", ":7070", "")
	work := fs.String("work-dir", "/var/lib/phaul", "")
	timeout := fs.Duration("timeout", time.Minute, "")
	max := fs.Int("max-migrations", 4, "")
	verbose := fs.Bool("verbose", false, "")
	fs.String("config", "", "")
	return fs, listen, work, timeout, max, verbose
}

func writeConf(t *testing.T, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "phaul-service.conf")
	if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// Flags win over the environment, which wins over the file, which wins
// over the defaults.
func TestApplyConfigPrecedence(t *testing.T) {
	conf := writeConf(t, `# phaul-service
listen = 10.0.0.2:7070
work-dir = "/srv/phaul"
timeout = 30s

max-migrations = 2
verbose = true
`)
	fs, listen, work, timeout, max, verbose := newFlags()
	if err := fs.Parse([]string{"--timeout", "5s"}); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PHAUL_SERVICE_MAX_MIGRATIONS", "8")
	t.Setenv("PHAUL_SERVICE_TIMEOUT", "1h") // the flag wins
	if err := ApplyConfig(fs, conf, false, "PHAUL_SERVICE_", "config"); err != nil {
		t.Fatal(err)
	}
	if *listen != "10.0.0.2:7070" || *work != "/srv/phaul" || *timeout != 5*time.Second || *max != 8 || !*verbose {
		t.Errorf("listen %q work %q timeout %v max %d verbose %v", *listen, *work, *timeout, *max, *verbose)
	}
}

func TestApplyConfigErrors(t *testing.T) {
	for _, tc := range []struct{ text, want string }{
		{"listen = :1\nbogus = 1\n", ":2: unknown setting \"bogus\""},
		{"\n\ntimeout = soon\n", ":3: timeout: "},
		{"listen\n", ":1: want \"name = value\""},
		{"listen = :1\nlisten = :2\n", ":2: listen is already set on line 1"},
		{"config = /etc/other\n", ":1: unknown setting \"config\""},
	} {
		fs, _, _, _, _, _ := newFlags()
		fs.Parse(nil)
		conf := writeConf(t, tc.text)
		err := ApplyConfig(fs, conf, false, "PHAUL_SERVICE_", "config")
		if err == nil || !strings.Contains(err.Error(), conf+tc.want) {
			t.Errorf("%q: error %v, want it to contain %q", tc.text, err, conf+tc.want)
		}
	}
	fs, _, _, _, _, _ := newFlags()
	fs.Parse(nil)
	t.Setenv("PHAUL_SERVICE_MAX_MIGRATIONS", "many")
	if err := ApplyConfig(fs, "", false, "PHAUL_SERVICE_"); err == nil || !strings.Contains(err.Error(), "environment PHAUL_SERVICE_MAX_MIGRATIONS") {
		t.Errorf("bad environment value: %v", err)
	}
	os.Unsetenv("PHAUL_SERVICE_MAX_MIGRATIONS")
	// A missing default file is fine; a file asked for must exist.
	missing := filepath.Join(t.TempDir(), "none.conf")
	if err := ApplyConfig(fs, missing, false, "X_"); err != nil {
		t.Errorf("missing optional file: %v", err)
	}
	if err := ApplyConfig(fs, missing, true, "X_"); err == nil {
		t.Error("missing required file accepted")
	}
}
