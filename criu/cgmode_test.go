package criu

import (
	"strings"
	"testing"
)

func TestParseCgroupMode(t *testing.T) {
	for name := range CgroupModes {
		if _, err := ParseCgroupMode(name); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
	if _, err := ParseCgroupMode("hard"); err == nil || !strings.Contains(err.Error(), "ignore, none, props, soft, full, strict") && !strings.Contains(err.Error(), "full, ignore") {
		t.Errorf("bad mode: %v", err)
	}
}

func TestCgroupModeName(t *testing.T) {
	for name, m := range CgroupModes {
		if got := CgroupModeName(m); got != name {
			t.Errorf("CgroupModeName(%v) = %q, want %q", m, got, name)
		}
	}
}
