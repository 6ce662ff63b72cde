package precopy

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"maps"
	"slices"
	"strings"
	"testing"

	"github.com/phaul/phaul/criu"
)

// buf is a FlushWriter that keeps what was written.
type buf struct {
	bytes.Buffer
	flushes int
}

func (b *buf) Flush() error { b.flushes++; return nil }

// entry is one decoded command of a page stream.
type entry struct {
	h    criu.PageIov
	data []byte
}

func decode(t *testing.T, b []byte) []entry {
	t.Helper()
	r := bytes.NewReader(b)
	var hb [criu.PageIovSize]byte
	var out []entry
	for {
		h, err := criu.ReadPageIov(r, &hb)
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatalf("encoder wrote a bad stream: %v", err)
		}
		e := entry{h: h, data: make([]byte, h.DataLen())}
		if _, err := io.ReadFull(r, e.data); err != nil {
			t.Fatalf("short page data: %v", err)
		}
		out = append(out, e)
	}
}

func headers(es []entry) []criu.PageIov {
	var out []criu.PageIov
	for _, e := range es {
		out = append(out, e.h)
	}
	return out
}

func pages(fill ...byte) []byte {
	var b []byte
	for _, f := range fill {
		b = append(b, bytes.Repeat([]byte{f}, criu.PageSize)...)
	}
	return b
}

// answers is what a page server answers: an OPEN2 byte per image (has a
// parent), then the CLOSE status.
func answers(parents []bool, status int32) io.Reader {
	var b []byte
	for _, p := range parents {
		if p {
			b = append(b, 1)
		} else {
			b = append(b, 0)
		}
	}
	return bytes.NewReader(binary.NativeEndian.AppendUint32(b, uint32(status)))
}

// Images of the tests' streams: two tasks' and a shared memory object's.
var (
	task1 = criu.PageDst(criu.PSTypePid, 1)
	task2 = criu.PageDst(criu.PSTypePid, 2)
	shm7  = criu.PageDst(criu.PSTypeShmem, 7)
)

// stream writes one image set: for each image (by dst_id, in order),
// pages at 0x10000.
func stream(t *testing.T, e *Encoder, parents []bool, status int32, images map[uint64][]byte) error {
	t.Helper()
	ctx := context.Background()
	replies := make(chan error, 1)
	go func() { replies <- e.Replies(ctx, answers(parents, status), nil) }()
	dsts := slices.Sorted(maps.Keys(images))
	for _, dst := range dsts {
		done, err := e.Open(dst)
		if err != nil {
			t.Fatal(err)
		}
		if err := wait(ctx, done); err != nil {
			t.Fatal(err)
		}
		if err := e.Pages(0x10000, images[dst]); err != nil {
			t.Fatal(err)
		}
	}
	done, err := e.Close()
	if err != nil {
		t.Fatal(err)
	}
	err = wait(ctx, done)
	if rerr := <-replies; (rerr == nil) != (err == nil) {
		t.Fatalf("Replies said %v, Close %v", rerr, err)
	}
	return err
}

func TestEncoderRounds(t *testing.T) {
	h, err := NewHasher()
	if err != nil {
		t.Fatal(err)
	}
	tab := NewTable()
	dst := criu.PageDst(criu.PSTypePid, 1)

	// Round 1: no parent, everything sent.
	var w1 buf
	e := NewEncoder(&w1, h, tab, true)
	if err := stream(t, e, []bool{false}, 0, map[uint64][]byte{task1: pages('a', 'b', 'c', 'd')}); err != nil {
		t.Fatal(err)
	}
	tab.Sweep()
	got := decode(t, w1.Bytes())
	if len(got) != 3 || got[1].h.Flags != criu.PEPresent || got[1].h.NrPages != 4 || got[2].h.Cmd != criu.PSIovClose {
		t.Fatalf("round 1: %v", headers(got))
	}
	if tab.Pages() != 4 || w1.flushes != 2 {
		t.Errorf("table %d pages, %d flushes", tab.Pages(), w1.flushes)
	}

	// Round 2: pages 0, 1 and 3 unchanged, 2 rewritten, one new page
	// further on; the old page 3 goes by reference even after the change.
	var w2 buf
	e = NewEncoder(&w2, h, tab, true)
	if err := stream(t, e, []bool{true}, 0, map[uint64][]byte{task1: pages('a', 'b', 'X', 'd', 'e')}); err != nil {
		t.Fatal(err)
	}
	tab.Sweep()
	want := []struct {
		flags uint16
		vaddr uint64
		n     uint64
	}{
		{criu.PEParent, 0x10000, 2},
		{criu.PEPresent, 0x12000, 1},
		{criu.PEParent, 0x13000, 1},
		{criu.PEPresent, 0x14000, 1},
	}
	got = decode(t, w2.Bytes())
	if len(got) != len(want)+2 {
		t.Fatalf("round 2: %v", headers(got))
	}
	for i, wnt := range want {
		g := got[i+1].h
		if g.Cmd != criu.PSIovAddF || g.Flags != wnt.flags || g.Vaddr != wnt.vaddr || g.NrPages != wnt.n || g.DstID != dst {
			t.Errorf("entry %d: %+v, want %+v", i, g, wnt)
		}
	}
	if !bytes.Equal(got[2].data, pages('X')) {
		t.Error("the rewritten page was not sent with its new bytes")
	}
	if s := e.Stats(); s.Pages != 5 || s.Sent != 2 || s.Referenced != 3 {
		t.Errorf("stats %+v", s)
	}

	// Round 3, final-like (not recording): the page server has no parent
	// for the image, so nothing may go by reference.
	var w3 buf
	e = NewEncoder(&w3, h, tab, false)
	if err := stream(t, e, []bool{false}, 0, map[uint64][]byte{task1: pages('a', 'b', 'X')}); err != nil {
		t.Fatal(err)
	}
	if s := e.Stats(); s.Referenced != 0 || s.Sent != 3 {
		t.Errorf("without a parent: %+v", s)
	}
	if tab.Pages() != 5 {
		t.Errorf("a stream that does not record changed the table: %d pages", tab.Pages())
	}
}

// A round out of room leaves the changed pages beyond its budget out of
// its images: neither sent nor referred to, and forgotten.
func TestEncoderBudget(t *testing.T) {
	h, _ := NewHasher()
	tab := NewTable()
	var w buf
	if err := stream(t, NewEncoder(&w, h, tab, true), []bool{false}, 0, map[uint64][]byte{task1: pages('a', 'b', 'c', 'd')}); err != nil {
		t.Fatal(err)
	}
	tab.Sweep()
	w.Reset()
	// The budget counts only pages the destination did not hold: of
	// the two new ones (4 and 5) it takes one; the three changed ones
	// replace their older copy and go whatever the budget.
	e := NewEncoder(&w, h, tab, true)
	e.SetBudget(1)
	if err := stream(t, e, []bool{true}, 0, map[uint64][]byte{task1: pages('X', 'b', 'Y', 'Z', 'e', 'f')}); err != nil {
		t.Fatal(err)
	}
	tab.Sweep()
	if s := e.Stats(); s.Sent != 4 || s.Referenced != 1 || s.Omitted != 1 {
		t.Errorf("stats %+v: want 4 sent, 1 referenced, 1 left out", s)
	}
	var got []criu.PageIov
	for _, g := range decode(t, w.Bytes()) {
		if g.h.Cmd == criu.PSIovAddF {
			got = append(got, g.h)
		}
	}
	if len(got) != 3 || got[0].Flags != criu.PEPresent || got[0].Vaddr != 0x10000 || got[0].NrPages != 1 ||
		got[1].Flags != criu.PEParent || got[1].Vaddr != 0x11000 ||
		got[2].Flags != criu.PEPresent || got[2].Vaddr != 0x12000 || got[2].NrPages != 3 {
		t.Errorf("entries %+v: want page 0 sent, page 1 referenced, pages 2-4 sent, nothing of page 5", got)
	}
	if tab.Pages() != 5 {
		t.Errorf("the table knows %d pages, want the 5 of the round", tab.Pages())
	}
}

// A page dropped by a round (unmapped, not read) is forgotten, so that the
// next image never refers to a page its parent lacks.
func TestTableSweepForgetsWhatARoundLeftOut(t *testing.T) {
	h, _ := NewHasher()
	tab := NewTable()
	var w buf
	if err := stream(t, NewEncoder(&w, h, tab, true), []bool{false, false}, 0,
		map[uint64][]byte{task1: pages('a', 'b'), task2: pages('c')}); err != nil {
		t.Fatal(err)
	}
	tab.Sweep()
	w.Reset()
	// The second round has image 1 only, and only its first page.
	if err := stream(t, NewEncoder(&w, h, tab, true), []bool{true}, 0, map[uint64][]byte{task1: pages('a')}); err != nil {
		t.Fatal(err)
	}
	tab.Sweep()
	if tab.Pages() != 1 || tab.has(criu.PageDst(criu.PSTypePid, 2)) {
		t.Errorf("after the sweep: %d pages, image 2 known: %v", tab.Pages(), tab.has(criu.PageDst(criu.PSTypePid, 2)))
	}
}

func TestRepliesStatus(t *testing.T) {
	h, _ := NewHasher()
	var w buf
	err := stream(t, NewEncoder(&w, h, NewTable(), true), []bool{false}, 0, nil)
	if err != nil {
		t.Fatalf("empty stream: %v", err)
	}
	err = stream(t, NewEncoder(&w, h, NewTable(), true), nil, -1, nil)
	if err == nil || !strings.Contains(err.Error(), "status -1") {
		t.Errorf("a failed page server: %v", err)
	}
}

// criuStream is a dump as CRIU writes it: OPEN2, pages marked lazy and
// present, shared memory, CLOSE.
func criuStream(task []byte, shmem []byte) []byte {
	pid, shm := task1, shm7
	var b []byte
	b = criu.PageIov{Cmd: criu.PSIovOpen2, DstID: pid}.Append(b)
	b = criu.PageIov{Cmd: criu.PSIovAddF, Flags: criu.PEPresent | criu.PELazy, NrPages: uint64(len(task) / criu.PageSize), Vaddr: 0x10000, DstID: pid}.Append(b)
	b = append(b, task...)
	b = criu.PageIov{Cmd: criu.PSIovOpen2, DstID: shm}.Append(b)
	b = criu.PageIov{Cmd: criu.PSIovAddF, Flags: criu.PEPresent, NrPages: uint64(len(shmem) / criu.PageSize), Vaddr: 0x10000, DstID: shm}.Append(b)
	b = append(b, shmem...)
	return criu.PageIov{Cmd: criu.PSIovClose}.Append(b)
}

// fakeCRIU writes a dump stream the way CRIU does: after each command the
// page server answers, it waits for the answer. It returns the stream to
// read, where the answers go, and what CRIU got once it is done.
func fakeCRIU(t *testing.T, stream []byte) (io.Reader, io.Writer, func() []byte) {
	t.Helper()
	out, outW := io.Pipe()
	ansR, ans := io.Pipe()
	got := &bytes.Buffer{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer outW.Close()
		r := bytes.NewReader(stream)
		var hb [criu.PageIovSize]byte
		for {
			h, err := criu.ReadPageIov(r, &hb)
			if err != nil {
				return
			}
			outW.Write(h.Append(nil))
			if _, err := io.CopyN(outW, r, h.DataLen()); err != nil {
				return
			}
			if n := h.ReplyLen(); n > 0 {
				if _, err := io.CopyN(got, ansR, int64(n)); err != nil {
					return
				}
			}
		}
	}()
	t.Cleanup(func() { ansR.Close(); out.Close() })
	return out, ans, func() []byte { <-done; return got.Bytes() }
}

func TestForward(t *testing.T) {
	h, _ := NewHasher()
	tab := NewTable()
	var w buf
	if err := stream(t, NewEncoder(&w, h, tab, true), []bool{false, false}, 0,
		map[uint64][]byte{task1: pages('a', 'b', 'c'), shm7: pages('s', 't')}); err != nil {
		t.Fatal(err)
	}
	tab.Sweep()

	w.Reset()
	e := NewEncoder(&w, h, tab, false)
	src, ans, toCRIU := fakeCRIU(t, criuStream(pages('a', 'Z', 'c'), pages('s', 'T')))
	replies := make(chan error, 1)
	go func() { replies <- e.Replies(context.Background(), answers([]bool{true, true}, 0), ans) }()
	if err := e.Forward(src); err != nil {
		t.Fatal(err)
	}
	if err := <-replies; err != nil {
		t.Fatal(err)
	}
	// CRIU is told that no image has a parent, and gets the status.
	if got := toCRIU(); !bytes.Equal(got, []byte{0, 0, 0, 0, 0, 0}) {
		t.Errorf("answers to CRIU: %x", got)
	}
	got := decode(t, w.Bytes())
	var flags []uint16
	for _, g := range got {
		if g.h.Cmd == criu.PSIovAddF {
			flags = append(flags, g.h.Flags)
		}
	}
	// The shared memory's unchanged page goes by reference too.
	wantFlags := []uint16{criu.PEParent, criu.PEPresent | criu.PELazy, criu.PEParent, criu.PEParent, criu.PEPresent}
	if len(flags) != len(wantFlags) {
		t.Fatalf("entries %v", headers(got))
	}
	for i := range flags {
		if flags[i] != wantFlags[i] {
			t.Errorf("entry %d flags %#x, want %#x", i, flags[i], wantFlags[i])
		}
	}
	if s := e.Stats(); s.Pages != 5 || s.Referenced != 3 || s.Sent != 2 || s.Images != 2 {
		t.Errorf("stats %+v", s)
	}
}

func TestForwardRefuses(t *testing.T) {
	pid := criu.PageDst(criu.PSTypePid, 1)
	for _, c := range []struct {
		name   string
		stream []byte
		want   string
	}{
		{"no close", criu.PageIov{Cmd: criu.PSIovOpen2, DstID: pid}.Append(nil), "ended before its CLOSE"},
		{"pages before open", criu.PageIov{Cmd: criu.PSIovAddF, Flags: criu.PEPresent, NrPages: 1, DstID: pid}.Append(nil), "not open"},
		{"lazy request", criu.PageIov{Cmd: criu.PSIovGet, NrPages: 1, DstID: pid}.Append(nil), "unexpected command"},
		{"garbage", bytes.Repeat([]byte{0xff}, 40), "bad page-server header"},
	} {
		t.Run(c.name, func(t *testing.T) {
			h, _ := NewHasher()
			var w buf
			e := NewEncoder(&w, h, NewTable(), false)
			go e.Replies(context.Background(), bytes.NewReader(make([]byte, 64)), io.Discard)
			err := e.Forward(bytes.NewReader(c.stream))
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("Forward = %v, want %q", err, c.want)
			}
		})
	}
}

// FuzzForward feeds arbitrary bytes as CRIU's dump stream to the encoder
// (with a table that knows some pages): it must never panic, and what it
// writes must be a valid page stream.
func FuzzForward(f *testing.F) {
	f.Add(criuStream(pages('a', 'Z', 'c'), pages('s')))
	f.Add(criuStream(pages('a'), nil)[:60])
	h, _ := NewHasher()
	f.Fuzz(func(t *testing.T, data []byte) {
		tab := NewTable()
		tab.begin()
		for i, c := range []byte("abc") {
			tab.put(criu.PageDst(criu.PSTypePid, 1), 0x10000+uint64(i)*criu.PageSize, h.Sum(pages(c)))
		}
		tab.Sweep()
		var w buf
		e := NewEncoder(&w, h, tab, false)
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		go e.Replies(ctx, bytes.NewReader(bytes.Repeat([]byte{1}, 1<<12)), io.Discard)
		if err := e.Forward(bytes.NewReader(data)); err != nil {
			return
		}
		decode(t, w.Bytes())
	})
}
