package criu

import (
	"bytes"
	"errors"
	"io"
	"testing"
)

// The page-server protocol is CRIU's: these values are read from
// criu/page-xfer.c and criu/include/pagemap.h and must never drift.
func TestPageWireConstants(t *testing.T) {
	for _, c := range []struct {
		name      string
		got, want int
	}{
		{"PageIovSize", PageIovSize, 32},
		{"PSIovAdd", PSIovAdd, 1},
		{"PSIovHole", PSIovHole, 2},
		{"PSIovOpen", PSIovOpen, 3},
		{"PSIovOpen2", PSIovOpen2, 4},
		{"PSIovParent", PSIovParent, 5},
		{"PSIovAddF", PSIovAddF, 6},
		{"PSIovGet", PSIovGet, 7},
		{"PSIovClose", PSIovClose, 0x1023},
		{"PSIovForceClose", PSIovForceClose, 0x1024},
		{"PEParent", PEParent, 1},
		{"PELazy", PELazy, 2},
		{"PEPresent", PEPresent, 4},
		{"PSTypePid", PSTypePid, 1},
		{"PSTypeShmem", PSTypeShmem, 2},
	} {
		if c.got != c.want {
			t.Errorf("%s = %#x, want %#x", c.name, c.got, c.want)
		}
	}
	h := PageIov{Cmd: PSIovAddF, Flags: PEPresent, NrPages: 2, Vaddr: 0x7f0000001000, DstID: PageDst(PSTypePid, 42)}
	// On a little-endian host (all CRIU supports but s390 and ppc64 BE).
	want := []byte{
		6, 0, 4, 0, 0, 0, 0, 0, // cmd = PE_PRESENT<<16 | ADD_F, padding
		2, 0, 0, 0, 0, 0, 0, 0,
		0x00, 0x10, 0, 0, 0, 0x7f, 0, 0,
		1, 42, 0, 0, 0, 0, 0, 0, // 42<<8 | PS_TYPE_PID
	}
	if got := h.Append(nil); !bytes.Equal(got, want) && isLittleEndian() {
		t.Errorf("wire form\n got %x\nwant %x", got, want)
	}
	if h.ID() != 42 || h.Type() != PSTypePid || h.DataLen() != 2*PageSize {
		t.Errorf("id %d type %d data %d", h.ID(), h.Type(), h.DataLen())
	}
}

func isLittleEndian() bool { return PageIov{Cmd: 1}.Append(nil)[0] == 1 }

func TestParsePageIov(t *testing.T) {
	pid := PageDst(PSTypePid, 1)
	for _, c := range []struct {
		name  string
		h     PageIov
		ok    bool
		reply int
	}{
		{"open2", PageIov{Cmd: PSIovOpen2, DstID: pid}, true, 1},
		{"add present", PageIov{Cmd: PSIovAddF, Flags: PEPresent, NrPages: 1, Vaddr: 0x1000, DstID: pid}, true, 0},
		{"add parent", PageIov{Cmd: PSIovAddF, Flags: PEParent, NrPages: 3, Vaddr: 0x1000, DstID: pid}, true, 0},
		{"add lazy", PageIov{Cmd: PSIovAddF, Flags: PELazy, NrPages: 3, Vaddr: 0x1000, DstID: pid}, true, 0},
		{"shmem", PageIov{Cmd: PSIovAddF, Flags: PEPresent, NrPages: 1, DstID: PageDst(PSTypeShmem, 9)}, true, 0},
		{"close", PageIov{Cmd: PSIovClose}, true, 4},
		{"lazy request", PageIov{Cmd: PSIovGet, NrPages: 8, Vaddr: 0x7f0000000000, DstID: 4242}, true, 0},
		{"lazy request, no pid", PageIov{Cmd: PSIovGet, NrPages: 8, Vaddr: 0x1000}, false, 0},
		{"lazy request, no pages", PageIov{Cmd: PSIovGet, Vaddr: 0x1000, DstID: 1}, false, 0},
		{"parent query", PageIov{Cmd: PSIovParent, DstID: pid}, true, 4},
		{"unknown command", PageIov{Cmd: 99, DstID: pid}, false, 0},
		{"unknown flag", PageIov{Cmd: PSIovAddF, Flags: 8, NrPages: 1, DstID: pid}, false, 0},
		{"flags on ADD", PageIov{Cmd: PSIovAdd, Flags: PEPresent, NrPages: 1, DstID: pid}, false, 0},
		{"parent and present", PageIov{Cmd: PSIovAddF, Flags: PEParent | PEPresent, NrPages: 1, DstID: pid}, false, 0},
		{"no pages", PageIov{Cmd: PSIovAddF, Flags: PEPresent, DstID: pid}, false, 0},
		{"too many pages", PageIov{Cmd: PSIovAddF, Flags: PEPresent, NrPages: MaxIovPages + 1, DstID: pid}, false, 0},
		{"unaligned", PageIov{Cmd: PSIovAddF, Flags: PEPresent, NrPages: 1, Vaddr: 0x1001, DstID: pid}, false, 0},
		{"wraps", PageIov{Cmd: PSIovAddF, Flags: PEPresent, NrPages: 2, Vaddr: ^uint64(0) &^ 0xfff, DstID: pid}, false, 0},
		{"bad type", PageIov{Cmd: PSIovOpen2, DstID: PageDst(3, 1)}, false, 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, err := ParsePageIov(c.h.Append(nil))
			if (err == nil) != c.ok {
				t.Fatalf("ParsePageIov(%+v) = %v, want ok=%v", c.h, err, c.ok)
			}
			if err != nil {
				if !errors.Is(err, ErrPageWire) {
					t.Errorf("error %v is not ErrPageWire", err)
				}
				return
			}
			if got != c.h {
				t.Errorf("round trip: got %+v, want %+v", got, c.h)
			}
			if got.ReplyLen() != c.reply {
				t.Errorf("ReplyLen = %d, want %d", got.ReplyLen(), c.reply)
			}
		})
	}
	if _, err := ParsePageIov(make([]byte, 31)); err == nil {
		t.Error("a short header was accepted")
	}
}

func TestReadPageIovEOF(t *testing.T) {
	var buf [PageIovSize]byte
	if _, err := ReadPageIov(bytes.NewReader(nil), &buf); err != io.EOF {
		t.Errorf("empty stream: %v, want io.EOF", err)
	}
	if _, err := ReadPageIov(bytes.NewReader(make([]byte, 10)), &buf); !errors.Is(err, ErrPageWire) {
		t.Errorf("cut header: %v, want ErrPageWire", err)
	}
}

// FuzzPageStream feeds arbitrary bytes to the stream parser as a page
// pump reads them: headers, then their page data. It must never panic or
// over-read, and every accepted header must encode back to its bytes.
func FuzzPageStream(f *testing.F) {
	pid := PageDst(PSTypePid, 1)
	var seed []byte
	seed = PageIov{Cmd: PSIovOpen2, DstID: pid}.Append(seed)
	seed = PageIov{Cmd: PSIovAddF, Flags: PEPresent, NrPages: 1, Vaddr: 0x1000, DstID: pid}.Append(seed)
	seed = append(seed, make([]byte, PageSize)...)
	seed = PageIov{Cmd: PSIovAddF, Flags: PEParent, NrPages: 4, Vaddr: 0x2000, DstID: pid}.Append(seed)
	seed = PageIov{Cmd: PSIovClose}.Append(seed)
	f.Add(seed)
	f.Add(seed[:40])
	f.Fuzz(func(t *testing.T, data []byte) {
		r := bytes.NewReader(data)
		var buf [PageIovSize]byte
		for {
			off := len(data) - r.Len()
			h, err := ReadPageIov(r, &buf)
			if err != nil {
				return
			}
			if enc := h.Append(nil); !bytes.Equal(enc[:4], data[off:off+4]) || !bytes.Equal(enc[8:], data[off+8:off+32]) {
				t.Fatalf("header at %d does not encode back: %x vs %x", off, enc, data[off:off+32])
			}
			if n := h.DataLen(); n > 0 {
				if _, err := io.CopyN(io.Discard, r, n); err != nil {
					return
				}
			}
		}
	})
}

func TestParseLazyAnswer(t *testing.T) {
	for _, c := range []struct {
		name string
		h    PageIov
		ok   bool
	}{
		{"answer", PageIov{Cmd: PSIovAddF, Flags: PEPresent, NrPages: 3, Vaddr: 0x1000, DstID: 77}, true},
		{"LazyAnswer's", LazyAnswer(PageIov{Cmd: PSIovGet, NrPages: 8, Vaddr: 0x1000, DstID: 77}, 3), true},
		{"lazy flag too", PageIov{Cmd: PSIovAddF, Flags: PEPresent | PELazy, NrPages: 3, Vaddr: 0x1000, DstID: 77}, false},
		{"not present", PageIov{Cmd: PSIovAddF, Flags: PEParent, NrPages: 3, Vaddr: 0x1000, DstID: 77}, false},
		{"no pid", PageIov{Cmd: PSIovAddF, Flags: PEPresent, NrPages: 3, Vaddr: 0x1000}, false},
		{"no pages", PageIov{Cmd: PSIovAddF, Flags: PEPresent, Vaddr: 0x1000, DstID: 77}, false},
		{"unaligned", PageIov{Cmd: PSIovAddF, Flags: PEPresent, NrPages: 1, Vaddr: 0x1001, DstID: 77}, false},
		{"a request", PageIov{Cmd: PSIovGet, NrPages: 1, Vaddr: 0x1000, DstID: 77}, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, err := ParseLazyAnswer(c.h.Append(nil))
			if (err == nil) != c.ok {
				t.Fatalf("ParseLazyAnswer(%+v) = %v, want ok=%v", c.h, err, c.ok)
			}
			if err == nil && got != c.h {
				t.Errorf("round trip: got %+v, want %+v", got, c.h)
			}
		})
	}
}
