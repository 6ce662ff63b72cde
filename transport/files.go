package transport

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strings"

	"google.golang.org/protobuf/proto"

	"github.com/phaul/phaul/internal/pb"
)

// The files stream carries the files of the tree that the destination
// lacks or has in another version (Prepare.carry), zstd-compressed as a
// page stream is. Decompressed, for each file: a 4-byte big-endian length,
// a CarriedFile header of that many bytes (at most MaxCarriedHeader), then
// header.length bytes of content. A header with an empty path ends the
// stream.

// ErrBadFiles is matched (errors.Is) by every refusal of ReadFiles.
var ErrBadFiles = errors.New("bad files stream")

// FileWriter writes a files stream.
type FileWriter struct {
	cw *CompressWriter
	bw *bufio.Writer
}

// NewFileWriter starts a files stream on dst, counting into c.
func NewFileWriter(dst io.Writer, c *Counts) (*FileWriter, error) {
	cw, err := NewCompressWriter(dst, &c.Raw, &c.Wire)
	if err != nil {
		return nil, err
	}
	return &FileWriter{cw: cw, bw: bufio.NewWriterSize(cw, 256<<10)}, nil
}

// Send writes one file: h, then h.length bytes read from content (fewer is
// an error: the stream would be out of step).
func (w *FileWriter) Send(ctx context.Context, h *pb.CarriedFile, content io.Reader) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := ValidCarried(h); err != nil {
		return err
	}
	if err := w.header(h); err != nil {
		return err
	}
	if n, err := io.CopyN(w.bw, content, int64(h.Length)); err != nil {
		return fmt.Errorf("send %s: %d of %d bytes: %w", h.Path, n, h.Length, err)
	}
	return nil
}

func (w *FileWriter) header(h *pb.CarriedFile) error {
	data, err := proto.Marshal(h)
	if err != nil {
		return fmt.Errorf("send files: %w", err)
	}
	var n [4]byte
	binary.BigEndian.PutUint32(n[:], uint32(len(data)))
	w.bw.Write(n[:])
	if _, err := w.bw.Write(data); err != nil {
		return fmt.Errorf("send files: %w", err)
	}
	return nil
}

// Close ends the stream (not dst).
func (w *FileWriter) Close() error {
	if err := w.header(&pb.CarriedFile{}); err != nil {
		return err
	}
	if err := w.bw.Flush(); err != nil {
		return fmt.Errorf("send files: %w", err)
	}
	return w.cw.Close()
}

// ValidCarried checks a CarriedFile header as it comes off the wire: an
// absolute, clean path without NUL, a known way of carrying, and an offset
// only for a tail.
func ValidCarried(h *pb.CarriedFile) error {
	switch {
	case !strings.HasPrefix(h.Path, "/") || filepath.Clean(h.Path) != h.Path || strings.ContainsRune(h.Path, 0) || len(h.Path) > 4096:
		return fmt.Errorf("%w: path %q is not an absolute, clean path", ErrBadFiles, h.Path)
	case h.How != "whole" && h.How != "tail" && h.How != "replace":
		return fmt.Errorf("%w: %s: unknown way %q", ErrBadFiles, h.Path, h.How)
	case h.How != "tail" && h.Offset != 0:
		return fmt.Errorf("%w: %s: offset %d for a %s file", ErrBadFiles, h.Path, h.Offset, h.How)
	case h.Offset+h.Length < h.Offset:
		return fmt.Errorf("%w: %s: offset %d and length %d wrap", ErrBadFiles, h.Path, h.Offset, h.Length)
	}
	return nil
}

// ReceiveFiles reads a files stream from src (compressed), handing each
// file to place (ReadFiles).
func ReceiveFiles(ctx context.Context, src io.Reader, c *Counts, place func(*pb.CarriedFile, io.Reader) error) (files int, total int64, err error) {
	dec, err := newDecoder(src, c)
	if err != nil {
		return 0, 0, err
	}
	defer dec.Close()
	return ReadFiles(ctx, countReader{dec, &c.Raw}, place)
}

// ReadFiles reads a decompressed files stream: for each file it checks the
// header (ValidCarried) and calls place with it and a reader of exactly its
// content, which place must read to the end (or fail). It returns at the
// end marker, at the first error, or when ctx ends.
func ReadFiles(ctx context.Context, r io.Reader, place func(*pb.CarriedFile, io.Reader) error) (files int, total int64, err error) {
	br := bufio.NewReaderSize(r, 256<<10)
	for {
		if err := ctx.Err(); err != nil {
			return files, total, err
		}
		var n [4]byte
		if _, err := io.ReadFull(br, n[:]); err != nil {
			return files, total, fmt.Errorf("%w: %v", ErrBadFiles, err)
		}
		size := binary.BigEndian.Uint32(n[:])
		if size > MaxCarriedHeader {
			return files, total, fmt.Errorf("%w: a header of %d bytes", ErrBadFiles, size)
		}
		data := make([]byte, size)
		if _, err := io.ReadFull(br, data); err != nil {
			return files, total, fmt.Errorf("%w: %v", ErrBadFiles, err)
		}
		h := &pb.CarriedFile{}
		if err := proto.Unmarshal(data, h); err != nil {
			return files, total, fmt.Errorf("%w: header: %v", ErrBadFiles, err)
		}
		if h.Path == "" {
			return files, total, nil
		}
		if err := ValidCarried(h); err != nil {
			return files, total, err
		}
		if h.Length > 1<<62 {
			return files, total, fmt.Errorf("%w: %s: length %d", ErrBadFiles, h.Path, h.Length)
		}
		body := &io.LimitedReader{R: br, N: int64(h.Length)}
		if err := place(h, body); err != nil {
			return files, total, err
		}
		if body.N != 0 {
			return files, total, fmt.Errorf("%w: %s: %d of its bytes left unread", ErrBadFiles, h.Path, body.N)
		}
		files++
		total += int64(h.Length)
	}
}
