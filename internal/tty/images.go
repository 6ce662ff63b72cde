package tty

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/checkpoint-restore/go-criu/v7/crit"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/pstree"
	ttyimg "github.com/checkpoint-restore/go-criu/v7/crit/images/tty"
	"google.golang.org/protobuf/proto"
)

// DetachSessions rewrites the images in dir so that CRIU can restore the
// external terminals of a tree that was the job of a shell: such a
// terminal was the controlling terminal of a session whose leader is not
// in the tree (the shell's), and CRIU refuses to restore it ("No task
// found with sid"). Its session and process group are cleared: the
// restored tree uses the new terminal as an ordinary one, not as its
// controlling terminal. It returns how many terminals it changed.
func DetachSessions(dir string) (int, error) {
	led := map[uint32]bool{} // sessions whose leader is in the tree
	img, err := readImage(filepath.Join(dir, "pstree.img"), "PSTREE", &pstree.PstreeEntry{})
	if err != nil {
		return 0, err
	}
	for _, e := range img.Entries {
		p := e.Message.(*pstree.PstreeEntry)
		if p.GetPid() == p.GetSid() {
			led[p.GetSid()] = true
		}
	}
	path := filepath.Join(dir, "tty-info.img")
	img, err = readImage(path, "TTY_INFO", &ttyimg.TtyInfoEntry{})
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil // no terminals at all
	} else if err != nil {
		return 0, err
	}
	changed := 0
	for _, e := range img.Entries {
		t := e.Message.(*ttyimg.TtyInfoEntry)
		if t.GetType() != ttyimg.TtyType_EXT_TTY || t.GetSid() == 0 || led[t.GetSid()] {
			continue
		}
		t.Sid, t.Pgrp = proto.Uint32(0), proto.Uint32(0)
		changed++
	}
	if changed == 0 {
		return 0, nil
	}
	tmp := path + ".phaul"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return 0, fmt.Errorf("rewrite %s: %w", path, err)
	}
	err = crit.New(nil, f, "", false, false).Encode(img)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return 0, fmt.Errorf("rewrite %s: %w", path, err)
	}
	return changed, nil
}

// maxImage bounds the images decoded here (pstree.img, tty-info.img: a
// few bytes per task or terminal).
const maxImage = 16 << 20

// readImage decodes the image at path, whose magic must be magic. The
// images come from the network: before go-criu's decoder sees one, its
// framing is checked (the magic, and every entry's size within the file),
// for that decoder allocates whatever an entry's size field says.
func readImage(path, magic string, entry proto.Message) (*crit.CriuImage, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if err := checkFraming(f, magic); err != nil {
		return nil, fmt.Errorf("decode %s: %w", path, err)
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return nil, err
	}
	img, err := crit.New(f, nil, "", false, false).Decode(entry)
	if err != nil {
		return nil, fmt.Errorf("decode %s: %w", path, err)
	}
	return img, nil
}

// checkFraming reads an image's magic and walks its entries (a 4-byte
// little-endian size, then that many bytes) without decoding them.
func checkFraming(f *os.File, magic string) error {
	st, err := f.Stat()
	if err != nil {
		return err
	}
	if st.Size() > maxImage {
		return fmt.Errorf("%d bytes: larger than any such image (%d)", st.Size(), maxImage)
	}
	got, err := crit.ReadMagic(f)
	if err != nil {
		return fmt.Errorf("magic: %w", err)
	}
	if got != magic {
		return fmt.Errorf("magic %s, want %s", got, magic)
	}
	pos, err := f.Seek(0, io.SeekCurrent)
	if err != nil {
		return err
	}
	data := make([]byte, st.Size()-pos)
	if _, err := io.ReadFull(f, data); err != nil {
		return err
	}
	for off := 0; off < len(data); {
		if len(data)-off < 4 {
			return fmt.Errorf("truncated entry size at %d", pos+int64(off))
		}
		size := int(binary.LittleEndian.Uint32(data[off:]))
		off += 4
		if size > len(data)-off {
			return fmt.Errorf("entry of %d bytes at %d runs past the end", size, pos+int64(off))
		}
		off += size
	}
	return nil
}
