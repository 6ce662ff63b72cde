package main

import (
	"strings"
	"testing"

	"github.com/spf13/pflag"

	"github.com/phaul/phaul/migrate"
)

func TestParseBytes(t *testing.T) {
	for in, want := range map[string]uint64{"0": 0, "1000": 1000, "64K": 64 << 10, "1GiB": 1 << 30, "512MiB": 512 << 20, "3B": 3} {
		if got, err := parseBytes(in); err != nil || got != want {
			t.Errorf("%q: %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "-1", "1TB", "1.5G", "99999999999999999999G"} {
		if _, err := parseBytes(in); err == nil {
			t.Errorf("%q accepted", in)
		}
	}
}

// TestFileOptions: --files, --carry-limit and --replace-files, bare or
// naming paths.
func TestFileOptions(t *testing.T) {
	tests := []struct {
		args  []string
		all   bool
		paths string
		err   string
	}{
		{nil, false, "", ""},
		{[]string{"--replace-files"}, true, "", ""},
		{[]string{"--replace-files=/etc/app.conf,/opt/x"}, false, "/etc/app.conf /opt/x", ""},
		{[]string{"--replace-files=etc/app.conf"}, false, "", "absolute"},
		{[]string{"--files=copy"}, false, "", "want carry or check"},
		{[]string{"--carry-limit=lots"}, false, "", "--carry-limit"},
	}
	for _, tt := range tests {
		fs := pflag.NewFlagSet("migrate", pflag.ContinueOnError)
		checkFlags(fs)
		if err := fs.Parse(tt.args); err != nil {
			t.Fatal(err)
		}
		var o migrate.Options
		err := fileOptions(fs, &o)
		switch {
		case tt.err != "":
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("%v: %v, want %q", tt.args, err, tt.err)
			}
		case err != nil || o.ReplaceFiles != tt.all || strings.Join(o.ReplacePaths, " ") != tt.paths || o.Files != "carry" || o.CarryLimit != 1<<30:
			t.Errorf("%v: %+v %v", tt.args, o, err)
		}
	}
}
