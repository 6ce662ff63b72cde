package criu

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
)

// CRIU's page-server protocol (criu/page-xfer.c, criu/include/pagemap.h):
// what a dump writes to its page-server socket and a page server reads. It
// is host-endian and unversioned: both ends must run the same CRIU on the
// same architecture. The constants are pinned by TestPageWireConstants and
// described in docs/protocol.md.
const (
	// PageSize is the size of one page on the wire.
	PageSize = 4096
	// PageIovSize is the size of a header (struct page_server_iov: a u32
	// command, 4 bytes of padding, then three u64).
	PageIovSize = 32

	// Commands, in the low 16 bits of a header's cmd.
	PSIovAdd        = 1      // pages follow (legacy form of ADD_F with PE_PRESENT)
	PSIovHole       = 2      // pages are in the parent (legacy form of ADD_F with PE_PARENT)
	PSIovOpen       = 3      // open an image, no answer (legacy)
	PSIovOpen2      = 4      // open an image; answered by one byte: has the server a parent for it
	PSIovParent     = 5      // has the server a parent for this image; answered by an int32
	PSIovAddF       = 6      // pagemap entry with flags (high 16 bits of cmd); data follows with PE_PRESENT
	PSIovGet        = 7      // lazy pages: a request from the restoring side (dst_id is a bare PID)
	PSIovClose      = 0x1023 // end of the dump; answered by an int32 status
	PSIovForceClose = 0x1024 // end of a failed dump; answered the same way

	// Pagemap entry flags (the high 16 bits of an ADD_F command).
	PEParent  = 1 // the pages are in the parent images
	PELazy    = 2 // the pages may be restored lazily
	PEPresent = 4 // the pages follow the header

	// Image types, in the low 8 bits of dst_id; the id is above them.
	PSTypePid   = 1 // a task's memory; id is its PID as CRIU sees it
	PSTypeShmem = 2 // shared memory; id is the shmem id

	psCmdBits  = 16
	psTypeBits = 8

	// MaxIovPages bounds one header's page count (1 TiB of pages): far
	// above anything CRIU sends (one page pipe at most), far below what
	// would overflow an address.
	MaxIovPages = 1 << 28
)

// PageIov is one header of the page-server protocol.
type PageIov struct {
	Cmd     uint16 // PSIov*
	Flags   uint16 // PE_* (ADD_F only)
	NrPages uint64
	Vaddr   uint64
	DstID   uint64 // Type in the low 8 bits, ID above
}

// PageDst builds a dst_id from an image type and id.
func PageDst(typ uint8, id uint64) uint64 { return id<<psTypeBits | uint64(typ) }

// Type is the image type of the header's dst_id (PSTypePid, PSTypeShmem).
func (h PageIov) Type() uint8 { return uint8(h.DstID) }

// ID is the image id of the header's dst_id (a PID or a shmem id).
func (h PageIov) ID() uint64 { return h.DstID >> psTypeBits }

// DataLen is the number of page bytes that follow the header.
func (h PageIov) DataLen() int64 {
	if h.HasData() {
		return int64(h.NrPages) * PageSize
	}
	return 0
}

// HasData reports whether page bytes follow the header.
func (h PageIov) HasData() bool {
	return h.Cmd == PSIovAdd || (h.Cmd == PSIovAddF && h.Flags&PEPresent != 0)
}

// ReplyLen is the size of the answer the page server sends to this
// header: 1 byte for OPEN2, an int32 for PARENT and CLOSE, none otherwise.
func (h PageIov) ReplyLen() int {
	switch h.Cmd {
	case PSIovOpen2:
		return 1
	case PSIovParent, PSIovClose, PSIovForceClose:
		return 4
	}
	return 0
}

// Append appends the header's wire form to b.
func (h PageIov) Append(b []byte) []byte {
	e := binary.NativeEndian
	b = e.AppendUint32(b, uint32(h.Flags)<<psCmdBits|uint32(h.Cmd))
	b = append(b, 0, 0, 0, 0)
	b = e.AppendUint64(b, h.NrPages)
	b = e.AppendUint64(b, h.Vaddr)
	return e.AppendUint64(b, h.DstID)
}

// ErrPageWire is returned (wrapped) for a header phaul does not accept.
var ErrPageWire = errors.New("bad page-server header")

// ParsePageIov decodes and checks one header: a known command, known
// flags, page-aligned addresses that do not wrap, a known image type.
func ParsePageIov(b []byte) (PageIov, error) {
	if len(b) < PageIovSize {
		return PageIov{}, fmt.Errorf("%w: %d bytes, want %d", ErrPageWire, len(b), PageIovSize)
	}
	e := binary.NativeEndian
	cmd := e.Uint32(b)
	h := PageIov{
		Cmd:     uint16(cmd),
		Flags:   uint16(cmd >> psCmdBits),
		NrPages: e.Uint64(b[8:]),
		Vaddr:   e.Uint64(b[16:]),
		DstID:   e.Uint64(b[24:]),
	}
	return h, h.check()
}

func (h PageIov) check() error {
	switch h.Cmd {
	case PSIovClose, PSIovForceClose:
		return nil
	case PSIovOpen, PSIovOpen2, PSIovParent:
		return h.checkType()
	case PSIovAdd, PSIovHole, PSIovAddF, PSIovGet:
	default:
		return fmt.Errorf("%w: unknown command %#x", ErrPageWire, h.Cmd)
	}
	if h.Cmd != PSIovAddF && h.Flags != 0 {
		return fmt.Errorf("%w: flags %#x on command %d", ErrPageWire, h.Flags, h.Cmd)
	}
	if h.Flags&^(PEParent|PELazy|PEPresent) != 0 {
		return fmt.Errorf("%w: unknown flags %#x", ErrPageWire, h.Flags)
	}
	if h.Flags&PEParent != 0 && h.Flags&PEPresent != 0 {
		return fmt.Errorf("%w: pages both present and in the parent", ErrPageWire)
	}
	if h.NrPages == 0 || h.NrPages > MaxIovPages {
		return fmt.Errorf("%w: %d pages", ErrPageWire, h.NrPages)
	}
	if h.Vaddr%PageSize != 0 || h.Vaddr+h.NrPages*PageSize < h.Vaddr {
		return fmt.Errorf("%w: pages %#x+%d", ErrPageWire, h.Vaddr, h.NrPages)
	}
	if h.Cmd == PSIovGet {
		// CRIU's lazy-pages daemon names the image by the task's PID
		// alone (criu/pagemap.c: a page read's img_id), and so does the
		// answer: no type bits.
		if h.DstID == 0 || h.DstID > math.MaxInt32 {
			return fmt.Errorf("%w: request for pid %d", ErrPageWire, h.DstID)
		}
		return nil
	}
	return h.checkType()
}

func (h PageIov) checkType() error {
	if t := h.Type(); t != PSTypePid && t != PSTypeShmem {
		return fmt.Errorf("%w: image type %d", ErrPageWire, t)
	}
	return nil
}

// ReadPageIov reads and checks one header from r. At a clean end of r
// (no byte of a header read) it returns io.EOF.
func ReadPageIov(r io.Reader, buf *[PageIovSize]byte) (PageIov, error) {
	if _, err := io.ReadFull(r, buf[:]); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return PageIov{}, fmt.Errorf("%w: stream ends inside a header", ErrPageWire)
		}
		return PageIov{}, err
	}
	return ParsePageIov(buf[:])
}

// ParseLazyAnswer decodes and checks a page server's answer to a
// PS_IOV_GET: PS_IOV_ADD_F with PE_PRESENT, the request's bare PID as
// dst_id (like the request's), and at least one page.
func ParseLazyAnswer(b []byte) (PageIov, error) {
	if len(b) < PageIovSize {
		return PageIov{}, fmt.Errorf("%w: %d bytes, want %d", ErrPageWire, len(b), PageIovSize)
	}
	cmd := binary.NativeEndian.Uint32(b)
	if cmd != uint32(PEPresent)<<psCmdBits|PSIovAddF {
		return PageIov{}, fmt.Errorf("%w: answer %#x to a page request", ErrPageWire, cmd)
	}
	// Checked as the request it answers.
	h, err := ParsePageIov(PageIov{Cmd: PSIovGet, NrPages: binary.NativeEndian.Uint64(b[8:]), Vaddr: binary.NativeEndian.Uint64(b[16:]), DstID: binary.NativeEndian.Uint64(b[24:])}.Append(nil))
	if err != nil {
		return PageIov{}, err
	}
	h.Cmd, h.Flags = PSIovAddF, PEPresent
	return h, nil
}

// LazyAnswer is the header of the answer to page request req with n
// pages (ParseLazyAnswer's format): PS_IOV_ADD_F with PE_PRESENT, the
// request's vaddr and dst_id.
func LazyAnswer(req PageIov, n uint64) PageIov {
	return PageIov{Cmd: PSIovAddF, Flags: PEPresent, NrPages: n, Vaddr: req.Vaddr, DstID: req.DstID}
}

// ReadLazyAnswer reads and checks one answer to a PS_IOV_GET from r (the
// header only; DataLen bytes of pages follow it).
func ReadLazyAnswer(r io.Reader, buf *[PageIovSize]byte) (PageIov, error) {
	if _, err := io.ReadFull(r, buf[:]); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return PageIov{}, fmt.Errorf("%w: stream ends inside a header", ErrPageWire)
		}
		return PageIov{}, err
	}
	return ParseLazyAnswer(buf[:])
}
