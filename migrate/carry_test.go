package migrate

import (
	"bytes"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/phaul/phaul/internal/pb"
	"github.com/phaul/phaul/precheck"
)

// carrierFor is a carrier that offered and accepts list.
func carrierFor(t *testing.T, list ...*pb.Carry) *carrier {
	t.Helper()
	c := &carrier{dir: t.TempDir(), id: "0123456789abcdef", offered: map[string]*pb.Carry{}, replace: func(string) bool { return true }, log: slog.New(slog.DiscardHandler)}
	for _, l := range list {
		c.offered[l.Path] = l
	}
	if err := c.accept(list); err != nil {
		t.Fatal(err)
	}
	return c
}

// snapshot lists the files under root with their content and mode.
func snapshot(t *testing.T, root string) string {
	t.Helper()
	var out []string
	filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		data := ""
		if fi.Mode().IsRegular() {
			b, _ := os.ReadFile(p)
			data = string(b)
		}
		out = append(out, strings.TrimPrefix(p, root)+" "+fi.Mode().String()+" "+data)
		return nil
	})
	return strings.Join(out, "\n")
}

// TestCarrierUndo: a file placed in a directory made for it, a tail
// appended, a file replaced; the destination's files then hold the
// source's bytes, modes and times, and after undoCarried are exactly as
// they were; commitCarried instead keeps them and removes the replaced
// version.
func TestCarrierUndo(t *testing.T) {
	for _, commit := range []bool{false, true} {
		root := t.TempDir()
		logf, other := filepath.Join(root, "app.log"), filepath.Join(root, "data")
		os.WriteFile(logf, []byte("line 1\n"), 0o600)
		os.WriteFile(other, []byte("old version"), 0o644)
		before := snapshot(t, root)
		placed := filepath.Join(root, "new/dir/prog")
		c := carrierFor(t,
			&pb.Carry{Path: placed, How: precheck.CarryWhole},
			&pb.Carry{Path: logf, How: precheck.CarryTail, DestSize: 7},
			&pb.Carry{Path: other, How: precheck.CarryReplace, DestSize: 11})
		mtime := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC).UnixNano()
		files := []struct {
			h    *pb.CarriedFile
			body string
		}{
			{&pb.CarriedFile{Path: placed, How: "whole", Length: 4, Mode: 0o755, MtimeNanos: mtime, AtimeNanos: mtime}, "ELF!"},
			{&pb.CarriedFile{Path: logf, How: "tail", Offset: 7, Length: 7, Mode: 0o640, MtimeNanos: mtime}, "line 2\n"},
			{&pb.CarriedFile{Path: other, How: "replace", Length: 3, Mode: 0o600, MtimeNanos: mtime}, "new"},
		}
		for _, f := range files {
			if err := c.place(f.h, bytes.NewReader([]byte(f.body))); err != nil {
				t.Fatal(err)
			}
		}
		if err := c.missing(); err != nil {
			t.Fatal(err)
		}
		if b, _ := os.ReadFile(logf); string(b) != "line 1\nline 2\n" {
			t.Errorf("the log after its tail: %q", b)
		}
		if st, err := os.Stat(placed); err != nil || st.Mode() != 0o755 || !st.ModTime().Equal(time.Unix(0, mtime)) {
			t.Errorf("placed: %v %v", st, err)
		}
		if b, _ := os.ReadFile(other); string(b) != "new" {
			t.Errorf("replaced: %q", b)
		}
		if commit {
			commitCarried(c.dir, c.log)
			if ents, _ := filepath.Glob(filepath.Join(root, ".*")); len(ents) != 0 {
				t.Errorf("after the commit, left: %v", ents)
			}
			if b, _ := os.ReadFile(other); string(b) != "new" {
				t.Errorf("replaced, committed: %q", b)
			}
			continue
		}
		if err := undoCarried(c.dir, c.log); err != nil {
			t.Fatal(err)
		}
		if after := snapshot(t, root); after != before {
			t.Errorf("after undo:\n%s\nbefore:\n%s", after, before)
		}
		if _, err := os.Stat(filepath.Join(c.dir, carryJournal)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("the journal stays: %v", err)
		}
	}
}

// TestCarrierRefuses: what the source may not do.
func TestCarrierRefuses(t *testing.T) {
	root := t.TempDir()
	here := filepath.Join(root, "here")
	os.WriteFile(here, []byte("abc"), 0o644)
	c := carrierFor(t, &pb.Carry{Path: filepath.Join(root, "a"), How: precheck.CarryWhole}, &pb.Carry{Path: here, How: precheck.CarryTail, DestSize: 3})
	tests := []struct {
		name string
		h    *pb.CarriedFile
		want string
	}{
		{"not announced", &pb.CarriedFile{Path: "/etc/passwd", How: "whole"}, "did not announce"},
		{"another way", &pb.CarriedFile{Path: filepath.Join(root, "a"), How: "replace"}, "announced as whole"},
		{"a tail elsewhere", &pb.CarriedFile{Path: here, How: "tail", Offset: 1}, "starts at 1"},
	}
	for _, tt := range tests {
		if err := c.place(tt.h, strings.NewReader("")); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: %v, want %q", tt.name, err, tt.want)
		}
	}
	// A file that appeared since the checks is not overwritten.
	os.WriteFile(filepath.Join(root, "a"), []byte("theirs"), 0o644)
	if err := c.place(&pb.CarriedFile{Path: filepath.Join(root, "a"), How: "whole", Length: 2}, strings.NewReader("xy")); err == nil {
		t.Error("placed over a file that appeared since the checks")
	}
	if b, _ := os.ReadFile(filepath.Join(root, "a")); string(b) != "theirs" {
		t.Errorf("overwritten: %q", b)
	}
	// Offered lists bound what the source may announce.
	if err := (&carrier{offered: map[string]*pb.Carry{}}).accept([]*pb.Carry{{Path: "/etc/shadow", How: "whole"}}); !errors.Is(err, ErrProtocol) {
		t.Errorf("an announcement never offered: %v", err)
	}
	if err := c.missing(); err == nil || !strings.Contains(err.Error(), here) {
		t.Errorf("missing: %v", err)
	}
}
