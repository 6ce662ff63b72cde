package transport

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// The images stream carries CRIU's image files other than the pages, from
// the source's images directory to the destination's: for each file a
// 2-byte big-endian name length, the name, an 8-byte big-endian size and
// the content; a name length of 0 ends the stream.

// ErrBadImage is matched (errors.Is) by every refusal of the receiver.
var ErrBadImage = errors.New("bad image stream")

// ValidImageName accepts the names CRIU gives its image files: a plain
// file name of letters, digits, '.', '-' and '_', not starting with '.'.
func ValidImageName(name string) error {
	if name == "" || len(name) > MaxImageNameLen {
		return fmt.Errorf("%w: name of %d bytes", ErrBadImage, len(name))
	}
	if name[0] == '.' {
		return fmt.Errorf("%w: name %q starts with '.'", ErrBadImage, name)
	}
	for _, r := range name {
		ok := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '-' || r == '_'
		if !ok {
			return fmt.Errorf("%w: name %q has the character %q", ErrBadImage, name, r)
		}
	}
	return nil
}

// SendImages writes the named files of dir to w and ends the stream.
func SendImages(ctx context.Context, w io.Writer, dir string, names []string) (files int, total int64, err error) {
	bw := bufio.NewWriterSize(w, 256<<10)
	var hdr [8]byte
	for _, name := range names {
		if err := ctx.Err(); err != nil {
			return files, total, err
		}
		if err := ValidImageName(name); err != nil {
			return files, total, err
		}
		f, err := os.Open(filepath.Join(dir, name))
		if err != nil {
			return files, total, fmt.Errorf("send image: %w", err)
		}
		st, err := f.Stat()
		if err != nil {
			f.Close()
			return files, total, fmt.Errorf("send image: %w", err)
		}
		binary.BigEndian.PutUint16(hdr[:2], uint16(len(name)))
		bw.Write(hdr[:2])
		bw.WriteString(name)
		binary.BigEndian.PutUint64(hdr[:], uint64(st.Size()))
		bw.Write(hdr[:])
		n, err := io.CopyN(bw, f, st.Size())
		f.Close()
		if err != nil {
			return files, total, fmt.Errorf("send image %s: %w", name, err)
		}
		files++
		total += n
	}
	binary.BigEndian.PutUint16(hdr[:2], 0)
	bw.Write(hdr[:2])
	if err := bw.Flush(); err != nil {
		return files, total, fmt.Errorf("send images: %w", err)
	}
	return files, total, nil
}

// ImageLimits bound what ReceiveImages accepts.
type ImageLimits struct {
	MaxFileSize int64 // 0 means MaxImageFileSize
	MaxTotal    int64 // 0 means MaxImagesTotal
}

// ReceiveImages reads an images stream into dir, refusing bad names, files
// that already exist, and sizes over the limits (checked before the bytes
// are read). On error the files written so far stay for the caller to
// remove with the directory.
func ReceiveImages(ctx context.Context, r io.Reader, dir string, lim ImageLimits) (files int, total int64, err error) {
	if lim.MaxFileSize <= 0 {
		lim.MaxFileSize = MaxImageFileSize
	}
	if lim.MaxTotal <= 0 {
		lim.MaxTotal = MaxImagesTotal
	}
	br := bufio.NewReaderSize(r, 256<<10)
	var hdr [8]byte
	for {
		if err := ctx.Err(); err != nil {
			return files, total, err
		}
		if _, err := io.ReadFull(br, hdr[:2]); err != nil {
			return files, total, fmt.Errorf("%w: %v", ErrBadImage, err)
		}
		nlen := int(binary.BigEndian.Uint16(hdr[:2]))
		if nlen == 0 {
			return files, total, nil
		}
		if nlen > MaxImageNameLen {
			return files, total, fmt.Errorf("%w: name of %d bytes", ErrBadImage, nlen)
		}
		nb := make([]byte, nlen)
		if _, err := io.ReadFull(br, nb); err != nil {
			return files, total, fmt.Errorf("%w: %v", ErrBadImage, err)
		}
		name := string(nb)
		if err := ValidImageName(name); err != nil {
			return files, total, err
		}
		if _, err := io.ReadFull(br, hdr[:]); err != nil {
			return files, total, fmt.Errorf("%w: %v", ErrBadImage, err)
		}
		size := binary.BigEndian.Uint64(hdr[:])
		if size > uint64(lim.MaxFileSize) {
			return files, total, fmt.Errorf("%w: %s is %d bytes, limit %d", ErrBadImage, name, size, lim.MaxFileSize)
		}
		if uint64(total)+size > uint64(lim.MaxTotal) {
			return files, total, fmt.Errorf("%w: images exceed %d bytes", ErrBadImage, lim.MaxTotal)
		}
		f, err := os.OpenFile(filepath.Join(dir, name), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return files, total, fmt.Errorf("%w: %v", ErrBadImage, err)
		}
		n, err := io.CopyN(f, br, int64(size))
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		total += n
		if err != nil {
			return files, total, fmt.Errorf("receive image %s: %w", name, err)
		}
		files++
	}
}
