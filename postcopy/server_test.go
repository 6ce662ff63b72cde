package postcopy

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/phaul/phaul/criu"
	"github.com/phaul/phaul/internal/pagemap"
)

const pid = 5

// testSnapshot writes a dump of task pid: pages 1-2 lazy, 3 in the
// parent, 4-5 present (4 eager, 5 lazy: two entries that touch), 16 lazy
// without bytes; its parent holds page 3 and 9. Each stored page is
// filled with its page number.
func testSnapshot(t testing.TB) string {
	t.Helper()
	dir := t.TempDir()
	writeImages(t, filepath.Join(dir, "parent"), []pagemap.Entry{
		{Start: 3 * criu.PageSize, End: 4 * criu.PageSize, Flags: criu.PEPresent},
		{Start: 9 * criu.PageSize, End: 10 * criu.PageSize, Flags: criu.PEPresent},
	}, 3, 9)
	lazy := uint32(criu.PEPresent | criu.PELazy)
	entries := []pagemap.Entry{
		{Start: 1 * criu.PageSize, End: 3 * criu.PageSize, Flags: lazy},
		{Start: 3 * criu.PageSize, End: 4 * criu.PageSize, Flags: criu.PEParent},
		{Start: 4 * criu.PageSize, End: 5 * criu.PageSize, Flags: criu.PEPresent},
		{Start: 5 * criu.PageSize, End: 6 * criu.PageSize, Flags: lazy},
		{Start: 16 * criu.PageSize, End: 17 * criu.PageSize, Flags: criu.PELazy},
	}
	writeImages(t, dir, entries, 1, 2, 4, 5)
	return dir
}

// writeImages writes task pid's pagemap of entries into dir, and its
// pages image: a page filled with each number of stored.
func writeImages(t testing.TB, dir string, entries []pagemap.Entry, stored ...byte) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	var pages []byte
	for _, p := range stored {
		pages = append(pages, bytes.Repeat([]byte{p}, criu.PageSize)...)
	}
	for name, data := range map[string][]byte{"pagemap-5.img": pagemap.Encode(1, entries), "pages-1.img": pages, "pagemap-shmem-9.img": nil} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

func openTestSnapshot(t testing.TB) *Snapshot {
	t.Helper()
	s, err := OpenSnapshot(testSnapshot(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestSnapshotRead(t *testing.T) {
	s := openTestSnapshot(t)
	if got := s.Lazy(); got != 3 {
		t.Errorf("Lazy = %d, want 3", got)
	}
	for _, c := range []struct {
		name      string
		pid, page uint64
		max       int
		want      []byte // the pages read, by number
		noPages   bool
	}{
		{"a lazy run, through the parent's page, up to a hole", pid, 1, 8, []byte{1, 2, 3, 4, 5}, false},
		{"within a run", pid, 2, 1, []byte{2}, false},
		{"bounded by the buffer", pid, 1, 1, []byte{1}, false},
		{"across entries that touch", pid, 4, 8, []byte{4, 5}, false},
		{"in the parent", pid, 3, 1, []byte{3}, false},
		{"in the parent, but not referred to", pid, 9, 1, nil, true},
		{"lazy without bytes", pid, 16, 1, nil, true},
		{"a hole", pid, 8, 1, nil, true},
		{"no such task", 6, 1, 1, nil, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			buf := make([]byte, c.max*criu.PageSize)
			n, err := s.Read(c.pid, c.page*criu.PageSize, buf)
			if c.noPages {
				if !errors.Is(err, ErrNoPages) {
					t.Fatalf("Read = %d, %v; want ErrNoPages", n, err)
				}
				return
			}
			if err != nil || n != len(c.want) {
				t.Fatalf("Read = %d, %v; want %d pages", n, err, len(c.want))
			}
			for i, p := range c.want {
				if got := buf[i*criu.PageSize]; got != p || !bytes.Equal(buf[i*criu.PageSize:(i+1)*criu.PageSize], bytes.Repeat([]byte{p}, criu.PageSize)) {
					t.Errorf("page %d holds %d, want %d", i, got, p)
				}
			}
		})
	}
}

func get(page, n uint64) []byte {
	return criu.PageIov{Cmd: criu.PSIovGet, NrPages: n, Vaddr: page * criu.PageSize, DstID: pid}.Append(nil)
}

// Serve answers each request with a header naming what follows, then the
// pages, and the daemon's close with status 0.
func TestServe(t *testing.T) {
	s := openTestSnapshot(t)
	ours, theirs := net.Pipe()
	defer theirs.Close()
	done := make(chan error, 1)
	var stats Stats
	go func() { done <- Serve(context.Background(), ours, s, &stats) }()
	var hdr [criu.PageIovSize]byte
	for _, c := range []struct{ page, n, got uint64 }{{1, 2, 2}, {4, 100, 2}, {2, 1, 1}} {
		if _, err := theirs.Write(get(c.page, c.n)); err != nil {
			t.Fatal(err)
		}
		h, err := criu.ReadLazyAnswer(theirs, &hdr)
		if err != nil {
			t.Fatal(err)
		}
		want := criu.PageIov{Cmd: criu.PSIovAddF, Flags: criu.PEPresent, NrPages: c.got, Vaddr: c.page * criu.PageSize, DstID: pid}
		if h != want {
			t.Fatalf("answer %+v, want %+v", h, want)
		}
		data := make([]byte, h.DataLen())
		if _, err := io.ReadFull(theirs, data); err != nil {
			t.Fatal(err)
		}
		if data[0] != byte(c.page) {
			t.Errorf("answer for page %d starts with page %d", c.page, data[0])
		}
	}
	if _, err := theirs.Write(criu.PageIov{Cmd: criu.PSIovForceClose}.Append(nil)); err != nil {
		t.Fatal(err)
	}
	var status [4]byte
	if _, err := io.ReadFull(theirs, status[:]); err != nil || binary.NativeEndian.Uint32(status[:]) != 0 {
		t.Fatalf("close answered %v, %v", status, err)
	}
	if err := <-done; err != nil {
		t.Fatalf("Serve = %v", err)
	}
	if stats.Requests.Load() != 3 || stats.Pages.Load() != 5 {
		t.Errorf("stats %d requests, %d pages; want 3, 5", stats.Requests.Load(), stats.Pages.Load())
	}
}

// What ends Serve with an error: the daemon gone without closing, a
// request for pages the snapshot does not hold, a command that is not a
// request.
func TestServeFails(t *testing.T) {
	for _, c := range []struct {
		name string
		in   []byte
		want string
	}{
		{"daemon gone", get(1, 1), "left without saying it was done"},
		{"pages not held", get(16, 1), "pages not in the snapshot"},
		{"not a request", criu.PageIov{Cmd: criu.PSIovAddF, Flags: criu.PEParent, NrPages: 1, DstID: criu.PageDst(criu.PSTypePid, 1)}.Append(nil), "command 6"},
		{"garbage", bytes.Repeat([]byte{0xff}, criu.PageIovSize), "bad page-server header"},
	} {
		t.Run(c.name, func(t *testing.T) {
			err := Serve(context.Background(), &fakeConn{r: bytes.NewReader(c.in)}, openTestSnapshot(t), nil)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("Serve = %v, want an error with %q", err, c.want)
			}
		})
	}
}

// fakeConn reads from r and throws away what is written.
type fakeConn struct{ r io.Reader }

func (f *fakeConn) Read(b []byte) (int, error)  { return f.r.Read(b) }
func (f *fakeConn) Write(b []byte) (int, error) { return len(b), nil }
func (f *fakeConn) Close() error                { return nil }

// FuzzServe: the requests come from the destination over the network.
func FuzzServe(f *testing.F) {
	f.Add(append(get(1, 2), criu.PageIov{Cmd: criu.PSIovClose}.Append(nil)...))
	f.Add(get(4, 1<<40))
	f.Add(get(3, 1))
	dir := testSnapshot(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := OpenSnapshot(dir)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		_ = Serve(context.Background(), &fakeConn{r: bytes.NewReader(data)}, s, nil)
	})
}

func TestImageDst(t *testing.T) {
	for _, c := range []struct {
		name string
		want uint64
		ok   bool
	}{
		{"pagemap-42.img", criu.PageDst(criu.PSTypePid, 42), true},
		{"pagemap-shmem-0.img", criu.PageDst(criu.PSTypeShmem, 0), true},
		{"pagemap-shmem-8812.img", criu.PageDst(criu.PSTypeShmem, 8812), true},
		{"pagemap-x.img", 0, false},
		{"pagemap-shmem-.img", 0, false},
	} {
		got, err := imageDst(c.name)
		if (err == nil) != c.ok || got != c.want {
			t.Errorf("imageDst(%s) = %#x, %v; want %#x, ok=%v", c.name, got, err, c.want, c.ok)
		}
	}
}
