package precopy

import (
	"errors"
	"fmt"
	"io"

	"github.com/phaul/phaul/criu"
)

// chunkPages is how many pages the encoder hashes and classifies at once.
const chunkPages = 256

// Forward reads CRIU's dump from src (the dump's page-server socket) and
// writes it to the page server, each task's unchanged pages by reference
// to the parent images. It returns once CRIU has sent CLOSE; Replies
// carries the answers back to CRIU.
func (e *Encoder) Forward(src io.Reader) error {
	var hb [criu.PageIovSize]byte
	buf := make([]byte, chunkPages*criu.PageSize)
	for {
		h, err := criu.ReadPageIov(src, &hb)
		if errors.Is(err, io.EOF) {
			return errors.New("criu's page stream ended before its CLOSE")
		}
		if err != nil {
			return fmt.Errorf("criu's page stream: %w", err)
		}
		switch h.Cmd {
		case criu.PSIovOpen2:
			if err := e.endImage(); err != nil {
				return err
			}
			if err := e.ask(h, nil); err != nil {
				return err
			}
			e.startImage(h.DstID)
		case criu.PSIovAddF:
			if !e.open || h.DstID != e.dst {
				return fmt.Errorf("criu's page stream: pages for image %#x, which is not open", h.DstID)
			}
			if err := e.forwardPages(h, src, buf); err != nil {
				return err
			}
		case criu.PSIovParent:
			if err := e.ask(h, nil); err != nil {
				return err
			}
		case criu.PSIovClose, criu.PSIovForceClose:
			if err := e.endImage(); err != nil {
				return err
			}
			if err := e.ask(h, nil); err != nil {
				return err
			}
			close(e.replies)
			return nil
		default:
			return fmt.Errorf("criu's page stream: unexpected command %d in a dump", h.Cmd)
		}
	}
}

// forwardPages passes on one ADD_F: present pages (a task's or shared
// memory's) through Pages (CRIU marks most of a task's lazy too, which
// the pages sent keep), entries without bytes as they came.
func (e *Encoder) forwardPages(h criu.PageIov, src io.Reader, buf []byte) error {
	if h.Flags&^criu.PELazy != criu.PEPresent {
		if err := e.flushRun(); err != nil {
			return err
		}
		if h.HasData() {
			e.stats.Pages += int64(h.NrPages)
			e.stats.Sent += int64(h.NrPages)
		}
		if err := e.header(h); err != nil {
			return err
		}
		if _, err := io.CopyN(e.w, src, h.DataLen()); err != nil {
			return fmt.Errorf("criu's page stream: %w", err)
		}
		return nil
	}
	e.lazy = h.Flags & criu.PELazy
	defer func() { e.lazy = 0 }()
	for left, va := h.NrPages, h.Vaddr; left > 0; {
		n := min(left, chunkPages)
		b := buf[:n*criu.PageSize]
		if _, err := io.ReadFull(src, b); err != nil {
			return fmt.Errorf("criu's page stream: %w", err)
		}
		if err := e.Pages(va, b); err != nil {
			return err
		}
		left -= n
		va += n * criu.PageSize
	}
	return nil
}
