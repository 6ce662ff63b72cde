package main

import (
	"bytes"
	"encoding/json"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/santhosh-tekuri/jsonschema/v6"

	"github.com/phaul/phaul/internal/twohosts"
)

// schema compiles docs/json/NAME.schema.json.
func schema(t *testing.T, name string) *jsonschema.Schema {
	t.Helper()
	c := jsonschema.NewCompiler()
	c.AssertFormat()
	s, err := c.Compile(filepath.Join("..", "..", "docs", "json", name+".schema.json"))
	if err != nil {
		t.Fatalf("schema %s: %v", name, err)
	}
	return s
}

// checkJSON validates out against the schema and returns it decoded.
func checkJSON(t *testing.T, name string, out []byte) map[string]any {
	t.Helper()
	v, err := jsonschema.UnmarshalJSON(bytes.NewReader(out))
	if err != nil {
		t.Fatalf("%s: not JSON: %v\n%s", name, err, out)
	}
	if err := schema(t, name).Validate(v); err != nil {
		t.Fatalf("%s does not match docs/json/%s.schema.json: %v\n%s", name, name, err, out)
	}
	var m map[string]any
	json.Unmarshal(out, &m)
	return m
}

// TestJSONOutputsMatchSchemas runs every command that has --json, for real
// and on both success and failure, and checks what it prints against the
// schema documented in docs/json (no field missing, none undocumented).
func TestJSONOutputsMatchSchemas(t *testing.T) {
	h := twohosts.New(t)
	svc := h.StartService(t)
	w := h.StartWorkload(t, twohosts.WorkloadOptions{Args: []string{"--child"}})
	phaul := func(t *testing.T, wantExit int, args ...string) []byte {
		t.Helper()
		out, errb, code := twohosts.Run(t, h.Command("a", append([]string{filepath.Join(h.Bin, "phaul")}, args...)...))
		if code != wantExit {
			t.Fatalf("phaul %v: exit %d, want %d\n%s\n%s", args, code, wantExit, out, errb)
		}
		return out
	}
	pid := strconv.Itoa(w.Pid)
	tls := "--tls-dir=" + h.TLS
	work := "--work-dir=" + filepath.Join(h.Dir, "source")
	nowhere := twohosts.AddrB + ":7071"

	checkJSON(t, "version", phaul(t, 0, "version", "--json"))
	checkJSON(t, "check-host", phaul(t, 0, "check-host", "--json"))
	if m := checkJSON(t, "status", phaul(t, 0, "status", "--json", tls, svc.Addr)); len(m["migrations"].([]any)) != 0 {
		t.Errorf("status before any migration: %v", m["migrations"])
	}
	checkJSON(t, "status", phaul(t, 1, "status", "--json", tls, nowhere))

	if m := checkJSON(t, "check", phaul(t, 0, "check", "--json", tls, pid, svc.Addr)); m["outcome"] != "ok" {
		t.Errorf("check: %v", m)
	}
	if m := checkJSON(t, "check", phaul(t, 1, "check", "--json", tls, pid, nowhere)); m["outcome"] != "failed" || m["error"] == "" {
		t.Errorf("check of nowhere: %v", m)
	}
	if m := checkJSON(t, "migrate", phaul(t, 1, "migrate", "--json", tls, work, pid, nowhere)); m["outcome"] != "failed" ||
		m["source_running"] != true || m["error_phase"] != "connect" {
		t.Errorf("migrate to nowhere: %v", m)
	}
	m := checkJSON(t, "migrate", phaul(t, 0, "migrate", "--json", tls, work, pid, svc.Addr))
	if m["outcome"] != "ok" || m["running"] != true || m["source_running"] != false {
		t.Errorf("migrate: %v", m)
	}
	st := checkJSON(t, "status", phaul(t, 0, "status", "--json", tls, svc.Addr))
	if ms := st["migrations"].([]any); len(ms) != 1 || ms[0].(map[string]any)["id"] != m["id"] {
		t.Errorf("status after the migration: %v", ms)
	}
}
