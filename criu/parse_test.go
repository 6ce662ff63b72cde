package criu

import (
	"errors"
	"strings"
	"testing"
)

func TestParseVersion(t *testing.T) {
	tests := []struct {
		in   string
		want Version
		err  bool
	}{
		{"4.2", Version{Major: 4, Minor: 2}, false},
		{"4.2.1", Version{Major: 4, Minor: 2, Sublevel: 1}, false},
		{"Version: 3.17.1\n", Version{Major: 3, Minor: 17, Sublevel: 1}, false},
		{"4", Version{}, true},
		{"4.x", Version{}, true},
		{"4.2.1.5", Version{}, true},
		{"", Version{}, true},
	}
	for _, tt := range tests {
		got, err := ParseVersion(tt.in)
		if (err != nil) != tt.err || got != tt.want {
			t.Errorf("ParseVersion(%q) = %v, %v; want %v, err=%v", tt.in, got, err, tt.want, tt.err)
		}
	}
}

func TestCheckCompat(t *testing.T) {
	tests := []struct {
		criu, kernel string
		ok           bool
		why          string
	}{
		{"4.2.1", "6.18.44-fc-v769", true, ""},
		{"4.1.1", "6.18.44", false, "1:16 opt"},
		{"4.1.1", "6.16.0", false, "1:16 opt"},
		{"4.1.1", "6.15.2", true, ""},
		{"3.17.1", "6.13.0", false, "vvar_vclock"},
		{"3.17.1", "6.12.9+deb13", true, ""},
		{"3.16.0", "5.10.0", false, "3.17"},
		{"4.2.0", "7.0.0", true, ""},
	}
	for _, tt := range tests {
		v, err := ParseVersion(tt.criu)
		if err != nil {
			t.Fatal(err)
		}
		k, err := ParseKernel(tt.kernel)
		if err != nil {
			t.Fatal(err)
		}
		err = CheckCompat(v, k)
		if (err == nil) != tt.ok {
			t.Errorf("CheckCompat(%s, %s) = %v, want ok=%v", tt.criu, tt.kernel, err, tt.ok)
			continue
		}
		if err != nil {
			var ce *CompatError
			if !errors.As(err, &ce) || !errors.Is(err, ErrIncompatible) || !strings.Contains(err.Error(), tt.why) {
				t.Errorf("CheckCompat(%s, %s) = %v, want a CompatError saying %q", tt.criu, tt.kernel, err, tt.why)
			}
		}
	}
}

func TestParseKernelErrors(t *testing.T) {
	for _, in := range []string{"", "6", "x.y", "6.y.1"} {
		if _, err := ParseKernel(in); err == nil {
			t.Errorf("ParseKernel(%q): no error", in)
		}
	}
}

func TestErrorLines(t *testing.T) {
	log := `(00.000001) Version: 4.2.1
(00.000958) Error (criu/util.c:1534): rlimit: Can't setup RLIMIT_NOFILE for self: Operation not permitted
(00.010000) Warn  (criu/kerndat.c:1799): Hardware breakpoints don't seem to work
(00.020000) Error (criu/sk-inet.c:137): inet: Unsupported proto 262 for socket 31d6
(00.020001) 1234: Error (criu/parasite.c:10): pie: 1234: oops
(00.020002) this line mentions an Error (but is not one)
(00.030000) Error (criu/cr-dump.c:1975): Dumping FAILED.
`
	got := ErrorLines(log)
	want := []string{
		"Error (criu/sk-inet.c:137): inet: Unsupported proto 262 for socket 31d6",
		"1234: Error (criu/parasite.c:10): pie: 1234: oops",
		"Error (criu/cr-dump.c:1975): Dumping FAILED.",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("ErrorLines =\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	// Many errors: the first ones and the last are kept.
	var b strings.Builder
	for i := 0; i < 50; i++ {
		b.WriteString("(00.1) Error (criu/x.c:1): line\n")
	}
	b.WriteString("(00.2) Error (criu/cr-dump.c:1): Dumping FAILED.\n")
	got = ErrorLines(b.String())
	if len(got) != maxErrorLines || got[len(got)-1] != "Error (criu/cr-dump.c:1): Dumping FAILED." {
		t.Errorf("long log: %d lines, last %q", len(got), got[len(got)-1])
	}
}
