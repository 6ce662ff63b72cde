package postcopy

import (
	"bytes"
	"testing"

	"github.com/phaul/phaul/criu"
)

func TestAhead(t *testing.T) {
	var a Ahead
	if a.Take(pid, criu.PageSize, 4) != nil {
		t.Fatal("pages from an empty Ahead")
	}
	var data []byte
	for _, p := range []byte{3, 4, 5, 6} {
		data = append(data, bytes.Repeat([]byte{p}, criu.PageSize)...)
	}
	a.Put(pid, 3*criu.PageSize, data)
	for _, c := range []struct {
		name      string
		pid, page uint64
		n         uint64
		want      []byte
	}{
		{"another task", 6, 3, 4, nil},
		{"before", pid, 2, 4, nil},
		{"the first two", pid, 3, 2, []byte{3, 4}},
		{"taken already", pid, 3, 1, nil},
		{"the rest, fewer than asked", pid, 5, 8, []byte{5, 6}},
		{"all taken", pid, 6, 1, nil},
	} {
		got := a.Take(c.pid, c.page*criu.PageSize, c.n)
		if len(got) != len(c.want)*criu.PageSize {
			t.Fatalf("%s: %d bytes, want %d pages", c.name, len(got), len(c.want))
		}
		for i, p := range c.want {
			if !bytes.Equal(got[i*criu.PageSize:(i+1)*criu.PageSize], bytes.Repeat([]byte{p}, criu.PageSize)) {
				t.Errorf("%s: page %d is not page %d", c.name, i, p)
			}
		}
	}
}
