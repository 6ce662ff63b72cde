package precopy

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"

	"github.com/phaul/phaul/criu"
)

// expander is design (a) of issue #14, built only to be measured beside
// the design phaul keeps (b: the rounds are CRIU parent images, and the
// dump's unchanged pages go as PE_PARENT entries that CRIU's restore reads
// from them). In (a) the destination keeps the rounds' pages in a store of
// its own and expands the dump's references before its CRIU page server
// sees them: that page server writes one flat set of images, and CRIU's
// restore reads no chain. Here the store is a round's own CRIU images
// (pages-N.img, indexed by its pagemaps), the cheapest store there is: the
// expansion reads each referenced page from it and sends it on.
type expander struct {
	store string                 // the round's images
	maps  map[uint64]*pagemapImg // dst_id -> its pagemap in the store
	pages map[uint32]*os.File    // pages image id -> the open file
}

func newExpander(store string) (*expander, error) {
	lvl, err := readLevel(store)
	if err != nil {
		return nil, err
	}
	x := &expander{store: store, maps: map[uint64]*pagemapImg{}, pages: map[uint32]*os.File{}}
	for name, pm := range lvl.maps {
		var id uint64
		if _, err := fmt.Sscanf(name, "pagemap-shmem-%d.img", &id); err == nil {
			x.maps[criu.PageDst(criu.PSTypeShmem, id)] = pm
		} else if _, err := fmt.Sscanf(name, "pagemap-%d.img", &id); err == nil {
			x.maps[criu.PageDst(criu.PSTypePid, id)] = pm
		} else {
			continue
		}
		f, err := os.Open(filepath.Join(store, fmt.Sprintf("pages-%d.img", pm.pagesID)))
		if err != nil {
			return nil, err
		}
		x.pages[pm.pagesID] = f
	}
	return x, nil
}

func (x *expander) close() {
	for _, f := range x.pages {
		f.Close()
	}
}

// run copies the page stream from in (the encoder's) to out (the page
// server's), with every PE_PARENT entry replaced by the pages' bytes from
// the store; the page server's answers go back from out to in, its
// answer to OPEN2 turned into "has a parent" (the store) so that the
// encoder refers to what the store holds.
func (x *expander) run(in io.ReadWriter, out io.ReadWriter) error {
	asked := make(chan criu.PageIov, 1024)
	answered := make(chan error, 1)
	go func() {
		var b [4]byte
		for h := range asked {
			n := h.ReplyLen()
			if _, err := io.ReadFull(out, b[:n]); err != nil {
				answered <- err
				return
			}
			if h.Cmd == criu.PSIovOpen2 {
				b[0] = 1
			}
			if _, err := in.Write(b[:n]); err != nil {
				answered <- err
				return
			}
		}
		answered <- nil
	}()
	err := x.copy(in, out, asked)
	close(asked)
	if aerr := <-answered; err == nil {
		err = aerr
	}
	return err
}

func (x *expander) copy(in io.Reader, out io.Writer, asked chan<- criu.PageIov) error {
	r := bufio.NewReaderSize(in, 1<<20)
	w := bufio.NewWriterSize(out, 1<<20)
	var hb [criu.PageIovSize]byte
	var hdr []byte
	for {
		h, err := criu.ReadPageIov(r, &hb)
		if err != nil {
			return fmt.Errorf("expand: %w", err)
		}
		if h.Cmd == criu.PSIovAddF && h.Flags&criu.PEParent != 0 {
			if err := x.expand(w, h); err != nil {
				return err
			}
			continue
		}
		hdr = h.Append(hdr[:0])
		w.Write(hdr)
		if _, err := io.CopyN(w, r, h.DataLen()); err != nil {
			return fmt.Errorf("expand: %w", err)
		}
		if h.ReplyLen() > 0 {
			if err := w.Flush(); err != nil {
				return err
			}
			asked <- h
		}
		if h.Cmd == criu.PSIovClose || h.Cmd == criu.PSIovForceClose {
			return nil
		}
	}
}

// expand writes the pages of a PE_PARENT entry with their bytes, read
// from the store.
func (x *expander) expand(w *bufio.Writer, h criu.PageIov) error {
	pm := x.maps[h.DstID]
	if pm == nil {
		return fmt.Errorf("expand: no image %#x in the store", h.DstID)
	}
	end := h.Vaddr + h.NrPages*criu.PageSize
	i := sort.Search(len(pm.entries), func(i int) bool { return pm.entries[i].end > h.Vaddr })
	for va := h.Vaddr; va < end; i++ {
		if i == len(pm.entries) || pm.entries[i].start > va || pm.entries[i].flags&criu.PEPresent == 0 {
			return fmt.Errorf("expand: page %#x of %#x is not in the store", va, h.DstID)
		}
		e := pm.entries[i]
		stop := min(end, e.end)
		n := (stop - va) / criu.PageSize
		out := criu.PageIov{Cmd: criu.PSIovAddF, Flags: criu.PEPresent | h.Flags&criu.PELazy, NrPages: n, Vaddr: va, DstID: h.DstID}
		w.Write(out.Append(nil))
		off := int64(e.off+(va-e.start)/criu.PageSize) * criu.PageSize
		if _, err := io.Copy(w, io.NewSectionReader(x.pages[pm.pagesID], off, int64(n)*criu.PageSize)); err != nil {
			return fmt.Errorf("expand: %w", err)
		}
		va = stop
	}
	return nil
}
