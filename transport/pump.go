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

// pumpBuf is the read size of the compressing pump: CRIU's page server
// protocol sends pages in chunks of up to a pipe's size.
const pumpBuf = 1 << 20

// SendCompressed reads src (CRIU's page-server traffic) until EOF and
// writes it zstd-compressed to dst. Everything read is flushed before the
// next read, so that a command waiting for an answer (CRIU's page server
// protocol has some) is never held in the compressor.
func SendCompressed(dst io.Writer, src io.Reader, c *Counts) error {
	enc, err := zstd.NewWriter(countWriter{dst, &c.Wire},
		zstd.WithEncoderLevel(zstd.SpeedFastest),
		zstd.WithEncoderConcurrency(1),
		// TLS already authenticates every byte: zstd's own checksum
		// would only cost time on both sides.
		zstd.WithEncoderCRC(false),
		zstd.WithWindowSize(1<<20))
	if err != nil {
		return fmt.Errorf("zstd: %w", err)
	}
	buf := make([]byte, pumpBuf)
	for {
		n, rerr := src.Read(buf)
		if n > 0 {
			c.Raw.Add(int64(n))
			if _, err := enc.Write(buf[:n]); err != nil {
				return fmt.Errorf("send pages: %w", err)
			}
			if err := enc.Flush(); err != nil {
				return fmt.Errorf("send pages: %w", err)
			}
		}
		if errors.Is(rerr, io.EOF) {
			if err := enc.Close(); err != nil {
				return fmt.Errorf("send pages: %w", err)
			}
			return nil
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
	dec, err := zstd.NewReader(countReader{src, &c.Wire},
		zstd.WithDecoderConcurrency(1),
		zstd.WithDecoderMaxWindow(8<<20),
		zstd.WithDecoderLowmem(true),
		zstd.IgnoreChecksum(true))
	if err != nil {
		return fmt.Errorf("zstd: %w", err)
	}
	defer dec.Close()
	if _, err := io.Copy(countWriter{dst, &c.Raw}, dec); err != nil {
		return fmt.Errorf("receive pages: %w", err)
	}
	return nil
}
