package atomicfile

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

func TestWrite(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.json")
	put := func(s string) func(*os.File) error {
		return func(f *os.File) error { _, err := f.WriteString(s); return err }
	}
	for _, durable := range []bool{false, true} {
		if err := Write(path, durable, put("new")); err != nil {
			t.Fatal(err)
		}
		if got, _ := os.ReadFile(path); string(got) != "new" {
			t.Errorf("content %q", got)
		}
	}
	// A failed write leaves the old content and no temporary file.
	boom := errors.New("boom")
	if err := Write(path, true, func(*os.File) error { return boom }); !errors.Is(err, boom) {
		t.Errorf("error %v", err)
	}
	if got, _ := os.ReadFile(path); string(got) != "new" {
		t.Errorf("content after a failed write %q", got)
	}
	if _, err := os.Stat(path + ".tmp"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("temporary file left: %v", err)
	}
}
