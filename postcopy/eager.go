package postcopy

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/phaul/phaul/criu"
	"github.com/phaul/phaul/internal/pagemap"
)

// EagerStats counts what WriteEager sent.
type EagerStats struct {
	Pages int64 // sent with their bytes: what the restore reads
	Lazy  int64 // sent as PE_LAZY entries without bytes: fetched later
}

// WriteEager sends the snapshot in dir to a CRIU page server over conn
// (CRIU's page-server protocol, as a dump would): every pagemap of it,
// the pages a lazy restore reads (shared memory, stacks, private file
// mappings) with their bytes, and the lazy ones as PE_LAZY entries
// without their bytes, so that the page server writes images a restore
// with lazy_pages can run from while the lazy pages are still on the
// source. It reads the page server's answers (one byte per image opened,
// a status at the end) from conn.
func WriteEager(conn io.ReadWriter, dir string) (EagerStats, error) {
	var st EagerStats
	names, err := filepath.Glob(filepath.Join(dir, "pagemap-*.img"))
	if err != nil {
		return st, err
	}
	slices.Sort(names)
	w := bufio.NewWriterSize(conn, 1<<20)
	for _, path := range names {
		dst, err := imageDst(filepath.Base(path))
		if err != nil {
			return st, err
		}
		if err := writeImage(w, conn, dir, path, dst, &st); err != nil {
			return st, fmt.Errorf("eager pages of %s: %w", filepath.Base(path), err)
		}
	}
	if err := ask(w, conn, criu.PageIov{Cmd: criu.PSIovClose}, 4); err != nil {
		return st, fmt.Errorf("eager pages: close: %w", err)
	}
	return st, nil
}

// imageDst is the page-server dst_id of a pagemap image, from its name.
func imageDst(name string) (uint64, error) {
	base := strings.TrimSuffix(strings.TrimPrefix(name, "pagemap-"), ".img")
	typ := uint8(criu.PSTypePid)
	if id, ok := strings.CutPrefix(base, "shmem-"); ok {
		typ, base = criu.PSTypeShmem, id
	}
	id, err := strconv.ParseUint(base, 10, 56)
	if err != nil {
		return 0, fmt.Errorf("pagemap image %s: not a task's or shared memory's", name)
	}
	return criu.PageDst(typ, id), nil
}

func writeImage(w *bufio.Writer, conn io.Reader, dir, path string, dst uint64, st *EagerStats) error {
	pm, err := pagemap.Read(path)
	if err != nil {
		return err
	}
	pages, err := os.Open(filepath.Join(dir, fmt.Sprintf("pages-%d.img", pm.PagesID)))
	if err != nil {
		return err
	}
	defer pages.Close()
	// The answer says whether the page server has a parent image: none
	// here, the snapshot is one dump.
	if err := ask(w, conn, criu.PageIov{Cmd: criu.PSIovOpen2, DstID: dst}, 1); err != nil {
		return err
	}
	for _, e := range pm.Entries {
		h := criu.PageIov{Cmd: criu.PSIovAddF, NrPages: e.Pages(), Vaddr: e.Start, DstID: dst}
		switch {
		case e.Flags == criu.PEPresent|criu.PELazy:
			h.Flags = criu.PELazy
			st.Lazy += int64(e.Pages())
		case e.Flags == criu.PEPresent:
			h.Flags = criu.PEPresent
		default:
			return fmt.Errorf("entry at %#x with flags %#x: a snapshot is one complete dump", e.Start, e.Flags)
		}
		if _, err := w.Write(h.Append(nil)); err != nil {
			return err
		}
		if h.Flags&criu.PEPresent != 0 {
			if _, err := io.Copy(w, io.NewSectionReader(pages, int64(e.Off)*criu.PageSize, int64(e.Pages())*criu.PageSize)); err != nil {
				return err
			}
			st.Pages += int64(e.Pages())
		}
	}
	return nil
}

// ask sends h (after what w holds) and reads the page server's answer of
// n bytes: for a status, 0 is success.
func ask(w *bufio.Writer, conn io.Reader, h criu.PageIov, n int) error {
	if _, err := w.Write(h.Append(nil)); err != nil {
		return err
	}
	if err := w.Flush(); err != nil {
		return err
	}
	ans := make([]byte, n)
	if _, err := io.ReadFull(conn, ans); err != nil {
		return fmt.Errorf("the page server's answer: %w", err)
	}
	if n == 4 {
		if status := int32(binary.NativeEndian.Uint32(ans)); status != 0 {
			return fmt.Errorf("the page server failed (status %d)", status)
		}
	}
	return nil
}
