// Package pagemap reads and writes CRIU's pagemap images
// (pagemap-ID.img, pagemap-shmem-ID.img): which pages of a task or a
// shared memory object an image set holds, and where their bytes lie in
// its pages image. The pre-copy pipeline reads them to prune a chain of
// images; the post-copy page server reads them to answer page requests
// from a snapshot.
//
// The entries are decoded by hand: CRIU's pagemap entries have a field
// go-criu's copy of pagemap.proto lacks (nr_pages, 5, which replaced
// compat_nr_pages, 2). Every field of pagemap_head and pagemap_entry is a
// varint.
package pagemap

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"

	"google.golang.org/protobuf/encoding/protowire"

	"github.com/phaul/phaul/criu"
)

// Image is one pagemap image: its pages image's id and its entries, each
// with the page offset of its bytes in the pages image (entries with bytes,
// PE_PRESENT, are stored there in the pagemap's order). Entries are sorted
// by address and do not overlap.
type Image struct {
	PagesID uint32
	Entries []Entry
}

// Entry is one entry of a pagemap: pages [Start, End), their PE_* flags,
// and for PE_PRESENT entries the page offset of their bytes in the pages
// image.
type Entry struct {
	Start, End uint64
	Flags      uint32
	Off        uint64
}

// Pages is the entry's page count.
func (e Entry) Pages() uint64 { return (e.End - e.Start) / criu.PageSize }

// CRIU's image magics (IMG_COMMON, then PAGEMAP) and bounds.
const (
	ImgCommonMagic = 0x54564319
	Magic          = 0x56084025
	// maxEntrySize bounds one entry's encoding (a few varints).
	maxEntrySize = 64
)

// Fields of pagemap_entry (and of pagemap_head: 1 is pages_id).
const (
	FieldVaddr       = 1
	FieldCompatPages = 2
	FieldInParent    = 3
	FieldFlags       = 4
	FieldNrPages     = 5
	knownFlags       = criu.PEParent | criu.PELazy | criu.PEPresent
	numFields        = 6
)

// Read reads a pagemap image written by CRIU (a dump or a page server).
func Read(path string) (*Image, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	r := bufio.NewReader(f)
	var magic [8]byte
	if _, err := io.ReadFull(r, magic[:]); err != nil {
		return nil, fmt.Errorf("%s: magic: %w", path, err)
	}
	if binary.LittleEndian.Uint32(magic[:]) != ImgCommonMagic || binary.LittleEndian.Uint32(magic[4:]) != Magic {
		return nil, fmt.Errorf("%s: not a pagemap image (magic %x)", path, magic)
	}
	head, err := readMessage(r)
	if err != nil {
		return nil, fmt.Errorf("%s: head: %w", path, err)
	}
	pm := &Image{PagesID: uint32(head.fields[1])}
	var off uint64
	for {
		m, err := readMessage(r)
		if errors.Is(err, io.EOF) {
			break
		}
		if err == nil {
			err = m.check()
		}
		if err != nil {
			return nil, fmt.Errorf("%s: entry %d: %w", path, len(pm.Entries), err)
		}
		e := m.entry(off)
		if e.Flags&criu.PEPresent != 0 {
			off += e.Pages()
		}
		pm.Entries = append(pm.Entries, e)
	}
	if err := pm.Sort(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return pm, nil
}

// Sort sorts the entries by address, as Find needs them; entries that
// overlap are an error.
func (pm *Image) Sort() error {
	slices.SortFunc(pm.Entries, func(a, b Entry) int { return cmpU64(a.Start, b.Start) })
	for i := 1; i < len(pm.Entries); i++ {
		if pm.Entries[i].Start < pm.Entries[i-1].End {
			return fmt.Errorf("entries overlap at %#x", pm.Entries[i].Start)
		}
	}
	return nil
}

// Find is the index of the entry holding address va, or -1.
func (pm *Image) Find(va uint64) int {
	i, _ := slices.BinarySearchFunc(pm.Entries, va, func(e Entry, a uint64) int { return cmpU64(e.End, a+1) })
	if i < len(pm.Entries) && pm.Entries[i].Start <= va {
		return i
	}
	return -1
}

// Encode is an image of entries as CRIU writes one (compat_nr_pages 0,
// then nr_pages), in the order given; Off is ignored.
func Encode(pagesID uint32, entries []Entry) []byte {
	b := binary.LittleEndian.AppendUint32(nil, ImgCommonMagic)
	b = binary.LittleEndian.AppendUint32(b, Magic)
	b = AppendMessage(b, 1, uint64(pagesID))
	for _, e := range entries {
		b = AppendMessage(b, FieldVaddr, e.Start, FieldCompatPages, 0, FieldFlags, uint64(e.Flags), FieldNrPages, e.Pages())
	}
	return b
}

// AppendMessage appends an image entry of varint fields (number, value,
// ...) to b: its 4-byte little-endian size, then the message.
func AppendMessage(b []byte, fields ...uint64) []byte {
	var m []byte
	for i := 0; i+1 < len(fields); i += 2 {
		m = protowire.AppendTag(m, protowire.Number(fields[i]), protowire.VarintType)
		m = protowire.AppendVarint(m, fields[i+1])
	}
	return append(binary.LittleEndian.AppendUint32(b, uint32(len(m))), m...)
}

// message is one decoded entry: fields holds its varints by number, has
// says which were present.
type message struct {
	fields [numFields]uint64
	has    [numFields]bool
}

// readMessage reads one entry of an image. io.EOF: the image ends cleanly
// before it.
func readMessage(r *bufio.Reader) (message, error) {
	var m message
	var size [4]byte
	if _, err := io.ReadFull(r, size[:]); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return m, errors.New("truncated entry size")
		}
		return m, err
	}
	n := binary.LittleEndian.Uint32(size[:])
	if n > maxEntrySize {
		return m, fmt.Errorf("entry of %d bytes", n)
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		return m, fmt.Errorf("truncated entry: %w", err)
	}
	for len(b) > 0 {
		num, typ, k := protowire.ConsumeTag(b)
		if k < 0 {
			return m, protowire.ParseError(k)
		}
		if typ != protowire.VarintType || num < 1 || int(num) >= numFields {
			return m, fmt.Errorf("unknown field %d (type %d)", num, typ)
		}
		v, l := protowire.ConsumeVarint(b[k:])
		if l < 0 {
			return m, protowire.ParseError(l)
		}
		m.fields[num], m.has[num] = v, true
		b = b[k+l:]
	}
	return m, nil
}

// pages is the entry's page count: nr_pages, or in older images
// compat_nr_pages.
func (m message) pages() uint64 {
	if m.has[FieldNrPages] {
		return m.fields[FieldNrPages]
	}
	return m.fields[FieldCompatPages]
}

// flags are the entry's PE_* flags, as CRIU reads them from older images
// too (criu/pagemap.c, init_compat_pagemap_entry).
func (m message) flags() uint64 {
	switch {
	case m.has[FieldInParent] && m.fields[FieldInParent] != 0:
		return m.fields[FieldFlags] | criu.PEParent
	case !m.has[FieldFlags]:
		return criu.PEPresent
	}
	return m.fields[FieldFlags]
}

func (m message) check() error {
	va, n, fl := m.fields[FieldVaddr], m.pages(), m.flags()
	switch {
	case !m.has[FieldVaddr]:
		return errors.New("no address")
	case n == 0 || n > criu.MaxIovPages || va%criu.PageSize != 0 || va+n*criu.PageSize < va:
		return fmt.Errorf("pages %#x+%d", va, n)
	case fl&^knownFlags != 0 || fl&criu.PEParent != 0 && fl&criu.PEPresent != 0:
		return fmt.Errorf("flags %#x", fl)
	}
	return nil
}

// entry is the checked message as an entry whose bytes (if present) are
// at page off of the pages image.
func (m message) entry(off uint64) Entry {
	va := m.fields[FieldVaddr]
	return Entry{Start: va, End: va + m.pages()*criu.PageSize, Flags: uint32(m.flags()), Off: off}
}

func cmpU64(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}
