package cli

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func TestLoggerFormat(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "stream"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var st unix.Stat_t
	unix.Fstat(int(f.Fd()), &st)
	journal := fmt.Sprintf("%d:%d", st.Dev, st.Ino)
	tests := []struct {
		format, env string
		json        bool
	}{
		{"auto", journal, true}, // stderr is the journal's stream
		{"auto", "", false},     // no journal
		{"auto", fmt.Sprintf("%d:%d", st.Dev, st.Ino+1), false}, // inherited, but another stream
		{"auto", "garbage", false},
		{"text", journal, false},
		{"json", "", true},
	}
	for _, tt := range tests {
		t.Run(tt.format+" "+tt.env, func(t *testing.T) {
			t.Setenv("JOURNAL_STREAM", tt.env)
			f.Truncate(0)
			f.Seek(0, 0)
			log, err := NewLogger(f, slog.LevelInfo, tt.format)
			if err != nil {
				t.Fatal(err)
			}
			log.Info("phase", "phase", "dump", "migration", "0123abcd")
			data, _ := os.ReadFile(f.Name())
			var m map[string]any
			isJSON := json.Unmarshal(data, &m) == nil
			if isJSON != tt.json {
				t.Fatalf("JSON %v, want %v: %q", isJSON, tt.json, data)
			}
			if !bytes.Contains(data, []byte("0123abcd")) {
				t.Errorf("the migration ID is missing: %q", data)
			}
		})
	}
	if _, err := NewLogger(f, slog.LevelInfo, "xml"); err == nil || !strings.Contains(err.Error(), "want text, json or auto") {
		t.Errorf("unknown format: %v", err)
	}
}
