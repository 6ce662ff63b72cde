package transport

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"os"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/phaul/phaul/internal/pb"
)

// FuzzControlFrame feeds arbitrary bytes to the control stream's decoder.
func FuzzControlFrame(f *testing.F) {
	hello, _ := proto.Marshal(&pb.Envelope{Msg: &pb.Envelope_Hello{Hello: &pb.Hello{ProtocolVersion: 1, MigrationId: "x"}}})
	f.Add(append(binary.BigEndian.AppendUint32(nil, uint32(len(hello))), hello...))
	f.Add(binary.BigEndian.AppendUint32(nil, MaxFrameSize+1))
	f.Add([]byte{0, 0, 0, 2, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, data []byte) {
		frame, err := ReadFrame(bytes.NewReader(data))
		if err != nil {
			return
		}
		if len(frame) > MaxFrameSize {
			t.Fatalf("frame of %d bytes accepted", len(frame))
		}
		m, err := DecodeEnvelope(frame)
		if err == nil && m.Msg == nil {
			t.Fatal("empty envelope accepted")
		}
	})
}

// FuzzImages feeds arbitrary bytes to the images stream's receiver: it
// must never write outside its directory nor past its limits.
func FuzzImages(f *testing.F) {
	f.Add(imageFrame("core-1.img", 3, "abc", true))
	f.Add(imageFrame("../x", 1, "a", true))
	f.Add(imageFrame("a.img", 1<<40, "", true))
	f.Fuzz(func(t *testing.T, data []byte) {
		parent := t.TempDir()
		dir := parent + "/img"
		if err := mkdir(dir); err != nil {
			t.Fatal(err)
		}
		_, total, _ := ReceiveImages(context.Background(), bytes.NewReader(data), dir, ImageLimits{MaxFileSize: 1 << 16, MaxTotal: 1 << 17})
		if total > 1<<17 {
			t.Fatalf("wrote %d bytes past the limit", total)
		}
		if entries, _ := readDir(parent); len(entries) != 1 {
			t.Fatalf("wrote outside the directory: %v", entries)
		}
	})
}

func mkdir(dir string) error { return os.Mkdir(dir, 0o700) }

func readDir(dir string) ([]os.DirEntry, error) { return os.ReadDir(dir) }

// limitWriter fails once more than n bytes were written.
type limitWriter struct{ n int }

func (w *limitWriter) Write(p []byte) (int, error) {
	if w.n -= len(p); w.n < 0 {
		return 0, io.ErrShortWrite
	}
	return len(p), nil
}

// FuzzReceiveCompressed feeds arbitrary bytes to the destination's side of
// the page stream (zstd, window at most 8 MiB): it must return, with an
// error or not, and never panic.
func FuzzReceiveCompressed(f *testing.F) {
	var good bytes.Buffer
	SendCompressed(&good, bytes.NewReader(bytes.Repeat([]byte("page"), 4096)), &Counts{})
	f.Add(good.Bytes())
	f.Add([]byte{0x28, 0xb5, 0x2f, 0xfd, 0x00, 0xff}) // a frame header asking for a huge window
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		ReceiveCompressed(&limitWriter{n: 64 << 20}, bytes.NewReader(data), &Counts{})
	})
}

// filesFrame is one file of a decompressed files stream.
func filesFrame(h *pb.CarriedFile, content string) []byte {
	data, _ := proto.Marshal(h)
	out := binary.BigEndian.AppendUint32(nil, uint32(len(data)))
	return append(append(out, data...), content...)
}

// FuzzFiles feeds arbitrary bytes to the files stream's decoder: every
// file it hands on has a valid header and exactly its length of content.
func FuzzFiles(f *testing.F) {
	end := filesFrame(&pb.CarriedFile{}, "")
	f.Add(append(filesFrame(&pb.CarriedFile{Path: "/var/log/app.log", How: "tail", Offset: 10, Length: 3}, "abc"), end...))
	f.Add(append(filesFrame(&pb.CarriedFile{Path: "/opt/x/../y", How: "whole", Length: 1}, "z"), end...))
	f.Add(binary.BigEndian.AppendUint32(nil, MaxCarriedHeader+1))
	f.Fuzz(func(t *testing.T, data []byte) {
		var sum int64
		files, total, err := ReadFiles(context.Background(), bytes.NewReader(data), func(h *pb.CarriedFile, r io.Reader) error {
			if err := ValidCarried(h); err != nil {
				t.Fatalf("an invalid header handed on: %v", err)
			}
			n, err := io.Copy(io.Discard, r)
			if n > int64(h.Length) {
				t.Fatalf("%d bytes of content for a length of %d", n, h.Length)
			}
			sum += n
			return err
		})
		if err == nil && total != sum {
			t.Fatalf("%d files, %d bytes counted, %d read", files, total, sum)
		}
	})
}
