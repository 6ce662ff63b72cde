// Package criuimg reads CRIU image files that arrive from the network,
// checking their framing before go-criu's decoder sees them: that decoder
// allocates whatever an entry's size field says (FuzzDetachSessions found
// a few bytes making it ask for GiBs). It also writes images back.
package criuimg

import (
	"encoding/binary"
	"fmt"
	"io"
	"os"

	"github.com/checkpoint-restore/go-criu/v7/crit"
	"google.golang.org/protobuf/proto"

	"github.com/phaul/phaul/internal/atomicfile"
)

// MaxSize bounds the images read here (pstree, tty-info, core: a few KiB
// per task).
const MaxSize = 16 << 20

// Read decodes the image at path, whose magic must be magic, with entries
// of entry's type.
func Read(path, magic string, entry proto.Message) (*crit.CriuImage, error) {
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
	if st.Size() > MaxSize {
		return fmt.Errorf("%d bytes: larger than any such image (%d)", st.Size(), MaxSize)
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

// Write replaces the image at path with img.
func Write(path string, img *crit.CriuImage) error {
	return atomicfile.Write(path, false, func(f *os.File) error {
		return crit.New(nil, f, "", false, false).Encode(img)
	})
}
