package transport

import (
	"errors"
	"fmt"
	"io"
	"sync/atomic"

	"github.com/klauspost/compress/zstd"
)

// Counts are the bytes a page pump moved: Raw as CRIU sees them, Wire as
// they cross the network (compressed).
type Counts struct {
	Raw  atomic.Int64
	Wire atomic.Int64
}

type countWriter struct {
	w io.Writer
	n *atomic.Int64
}

func (c countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n.Add(int64(n))
	return n, err
}

type countReader struct {
	r io.Reader
	n *atomic.Int64
}

func (c countReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n.Add(int64(n))
	return n, err
}

// CountReads returns a reader that adds what it reads from r to n.
func CountReads(r io.Reader, n *atomic.Int64) io.Reader { return countReader{r, n} }

// pumpBuf is the read size of the compressing pump: CRIU's page server
// protocol sends pages in chunks of up to a pipe's size.
const pumpBuf = 1 << 20

// CompressWriter compresses what is written to it onto a page stream
// (zstd, as ReceiveCompressed expects), counting the bytes that reach the
// network. Flush pushes out everything written so far: a command of CRIU's
// page-server protocol that waits for an answer must not stay in the
// compressor.
type CompressWriter struct {
	enc *zstd.Encoder
	raw *atomic.Int64
}

// NewCompressWriter returns a CompressWriter onto dst; raw (if not nil)
// counts the bytes written to it, wire the compressed bytes.
func NewCompressWriter(dst io.Writer, raw, wire *atomic.Int64) (*CompressWriter, error) {
	enc, err := zstd.NewWriter(countWriter{dst, wire},
		zstd.WithEncoderLevel(zstd.SpeedFastest),
		zstd.WithEncoderConcurrency(1),
		// TLS already authenticates every byte: zstd's own checksum
		// would only cost time on both sides.
		zstd.WithEncoderCRC(false),
		zstd.WithWindowSize(1<<20))
	if err != nil {
		return nil, fmt.Errorf("zstd: %w", err)
	}
	return &CompressWriter{enc: enc, raw: raw}, nil
}

func (w *CompressWriter) Write(p []byte) (int, error) {
	n, err := w.enc.Write(p)
	if w.raw != nil {
		w.raw.Add(int64(n))
	}
	if err != nil {
		err = fmt.Errorf("send pages: %w", err)
	}
	return n, err
}

// Flush sends everything written so far.
func (w *CompressWriter) Flush() error {
	if err := w.enc.Flush(); err != nil {
		return fmt.Errorf("send pages: %w", err)
	}
	return nil
}

// Close ends the compressed stream (not dst).
func (w *CompressWriter) Close() error {
	if err := w.enc.Close(); err != nil {
		return fmt.Errorf("send pages: %w", err)
	}
	return nil
}

// SendCompressed reads src (CRIU's page-server traffic) until EOF and
// writes it zstd-compressed to dst. Everything read is flushed before the
// next read, so that a command waiting for an answer (CRIU's page server
// protocol has some) is never held in the compressor.
func SendCompressed(dst io.Writer, src io.Reader, c *Counts) error {
	enc, err := NewCompressWriter(dst, &c.Raw, &c.Wire)
	if err != nil {
		return err
	}
	buf := make([]byte, pumpBuf)
	for {
		n, rerr := src.Read(buf)
		if n > 0 {
			if _, err := enc.Write(buf[:n]); err != nil {
				return err
			}
			if err := enc.Flush(); err != nil {
				return err
			}
		}
		if errors.Is(rerr, io.EOF) {
			return enc.Close()
		}
		if rerr != nil {
			enc.Close()
			return fmt.Errorf("read pages from criu: %w", rerr)
		}
	}
}

// ReceiveCompressed reads a zstd stream from src until its end and writes
// it decompressed to dst (the page server's socket).
func ReceiveCompressed(dst io.Writer, src io.Reader, c *Counts) error {
	dec, err := newDecoder(src, c)
	if err != nil {
		return err
	}
	defer dec.Close()
	if _, err := io.Copy(countWriter{dst, &c.Raw}, dec); err != nil {
		return fmt.Errorf("receive pages: %w", err)
	}
	return nil
}

// newDecoder decompresses a stream written by a CompressWriter, counting
// the compressed bytes read from src into c.Wire; windows over 8 MiB are
// refused (the writer uses 1 MiB).
func newDecoder(src io.Reader, c *Counts) (*zstd.Decoder, error) {
	dec, err := zstd.NewReader(countReader{src, &c.Wire},
		zstd.WithDecoderConcurrency(1),
		zstd.WithDecoderMaxWindow(8<<20),
		zstd.WithDecoderLowmem(true),
		zstd.IgnoreChecksum(true))
	if err != nil {
		return nil, fmt.Errorf("zstd: %w", err)
	}
	return dec, nil
}
