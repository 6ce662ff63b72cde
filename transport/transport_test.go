package transport

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/phaul/phaul/internal/pb"
)

// TestWireConstants pins the protocol: a change here is a protocol change
// (bump ProtocolVersion and update docs/protocol.md).
func TestWireConstants(t *testing.T) {
	if ProtocolVersion != 7 || KindLazy != 'L' || Accepted != 'A' || MaxFrameSize != 4<<20 || KindControl != 'C' || KindPages != 'P' || KindImages != 'I' || KindRound != 'R' || KindFiles != 'F' || MaxCarriedHeader != 64<<10 ||
		MaxImageNameLen != 255 || MaxImageFileSize != 256<<20 || MaxImagesTotal != 1<<30 || TLSServerName != "phaul-service" {
		t.Fatal("a wire constant changed; update docs/protocol.md, ProtocolVersion and this test together")
	}
	// Field numbers of the envelope are wire format too.
	b, _ := proto.Marshal(&pb.Envelope{Msg: &pb.Envelope_Commit{Commit: &pb.Commit{}}})
	if !bytes.Equal(b, []byte{7<<3 | 2, 0}) {
		t.Fatalf("Commit encodes as %x", b)
	}
}

// pipeSessions returns a client and a server session over an in-memory
// pipe (no TLS: the transport's own logic only).
func pipeSessions(t *testing.T) (*Session, *Session) {
	t.Helper()
	a, b := net.Pipe()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	type res struct {
		s   *Session
		err error
	}
	ch := make(chan res, 1)
	go func() {
		s, err := NewServerSession(ctx, b)
		ch <- res{s, err}
	}()
	c, err := NewClientSession(ctx, a)
	if err != nil {
		t.Fatal(err)
	}
	r := <-ch
	if r.err != nil {
		t.Fatal(r.err)
	}
	t.Cleanup(func() { c.Close(); r.s.Close() })
	return c, r.s
}

func TestControlRoundTrip(t *testing.T) {
	c, s := pipeSessions(t)
	ctx := context.Background()
	want := &pb.Envelope{Msg: &pb.Envelope_Hello{Hello: &pb.Hello{ProtocolVersion: 1, MigrationId: "m1"}}}
	go c.Control().Send(ctx, want)
	got, err := s.Control().Recv(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(got, want) {
		t.Errorf("got %v", got)
	}
	// Recv honours cancellation.
	cctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if _, err := s.Control().Recv(cctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Recv with expired ctx: %v", err)
	}
}

func TestControlRejects(t *testing.T) {
	tests := []struct {
		name  string
		frame []byte
		want  error
		text  string
	}{
		{"oversized", binary.BigEndian.AppendUint32(nil, MaxFrameSize+1), ErrFrameTooLarge, ""},
		{"empty envelope", binary.BigEndian.AppendUint32(nil, 0), ErrUnknownMessage, ""},
		{"unknown field", append(binary.BigEndian.AppendUint32(nil, 3), 0x9a, 0x06, 0), ErrUnknownMessage, ""}, // field 99, empty
		{"garbage", append(binary.BigEndian.AppendUint32(nil, 3), 0xff, 0xff, 0xff), ErrMalformed, "decode control message"},
		{"truncated", append(binary.BigEndian.AppendUint32(nil, 10), 1, 2), nil, "frame of 10 bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			data, err := ReadFrame(bytes.NewReader(tt.frame))
			if err == nil {
				_, err = DecodeEnvelope(data)
			}
			if err == nil || (tt.want != nil && !errors.Is(err, tt.want)) || !strings.Contains(err.Error(), tt.text) {
				t.Fatalf("got %v, want %v / %q", err, tt.want, tt.text)
			}
		})
	}
}

func TestStreamsKinds(t *testing.T) {
	c, s := pipeSessions(t)
	ctx := context.Background()
	go func() {
		st, err := c.Open(ctx, KindImages)
		if err == nil {
			st.Write([]byte("hi"))
			st.Close()
		}
	}()
	kind, st, err := s.Accept(ctx)
	if err != nil || kind != KindImages {
		t.Fatalf("accept: %q %v", kind, err)
	}
	b, _ := io.ReadAll(st)
	if string(b) != "hi" {
		t.Errorf("read %q", b)
	}
	// An unknown kind is refused.
	go func() {
		st, err := c.mux.OpenStream()
		if err == nil {
			st.Write([]byte{'Z'})
		}
	}()
	if _, _, err := s.Accept(ctx); err == nil || !strings.Contains(err.Error(), "unknown stream kind") {
		t.Errorf("unknown kind accepted: %v", err)
	}
}

func writeImages(t *testing.T, dir string, files map[string]string) []string {
	t.Helper()
	var names []string
	for n, c := range files {
		if err := os.WriteFile(filepath.Join(dir, n), []byte(c), 0o600); err != nil {
			t.Fatal(err)
		}
		names = append(names, n)
	}
	return names
}

func TestImagesRoundTrip(t *testing.T) {
	src, dst := t.TempDir(), t.TempDir()
	files := map[string]string{"core-1.img": "core", "mm-1.img": strings.Repeat("m", 100000), "inventory.img": ""}
	names := writeImages(t, src, files)
	var buf bytes.Buffer
	n, total, err := SendImages(context.Background(), &buf, src, names)
	if err != nil || n != 3 {
		t.Fatalf("send: %d %v", n, err)
	}
	rn, rtotal, err := ReceiveImages(context.Background(), &buf, dst, ImageLimits{})
	if err != nil || rn != n || rtotal != total {
		t.Fatalf("receive: %d %d %v (sent %d %d)", rn, rtotal, err, n, total)
	}
	for name, want := range files {
		got, err := os.ReadFile(filepath.Join(dst, name))
		if err != nil || string(got) != want {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func imageFrame(name string, size uint64, body string, end bool) []byte {
	b := binary.BigEndian.AppendUint16(nil, uint16(len(name)))
	b = append(b, name...)
	b = binary.BigEndian.AppendUint64(b, size)
	b = append(b, body...)
	if end {
		b = append(b, 0, 0)
	}
	return b
}

func TestImagesRejects(t *testing.T) {
	tests := []struct {
		name   string
		stream []byte
		lim    ImageLimits
		text   string
	}{
		{"slash", imageFrame("a/b.img", 1, "x", true), ImageLimits{}, "character '/'"},
		{"dotdot", imageFrame("..", 1, "x", true), ImageLimits{}, "starts with '.'"},
		{"absolute", imageFrame("/etc/passwd", 1, "x", true), ImageLimits{}, "character '/'"},
		{"odd char", imageFrame("a\x00.img", 1, "x", true), ImageLimits{}, "character"},
		{"file too big", imageFrame("big.img", 1000, "", true), ImageLimits{MaxFileSize: 999}, "limit 999"},
		{"total too big", append(imageFrame("a.img", 6, "aaaaaa", false), imageFrame("b.img", 6, "bbbbbb", true)...), ImageLimits{MaxTotal: 10}, "exceed 10"},
		{"never ends", imageFrame("a.img", 1, "a", false), ImageLimits{}, "EOF"},
		{"short body", imageFrame("a.img", 10, "abc", false), ImageLimits{}, "EOF"},
		{"duplicate", append(imageFrame("a.img", 1, "a", false), imageFrame("a.img", 1, "a", true)...), ImageLimits{}, "exists"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			_, _, err := ReceiveImages(context.Background(), bytes.NewReader(tt.stream), dir, tt.lim)
			if err == nil || !strings.Contains(err.Error(), tt.text) {
				t.Fatalf("got %v, want %q", err, tt.text)
			}
			// Nothing was written outside dir.
			if _, err := os.Stat(filepath.Join(filepath.Dir(dir), "b.img")); err == nil {
				t.Error("wrote outside the directory")
			}
		})
	}
}

// TestPumpInteractive runs the compressed pump both ways like the page
// server protocol does: a request must arrive before its answer is sent,
// so nothing may be held back in the compressor.
func TestPumpInteractive(t *testing.T) {
	// criu(dump) <-> [srcA|srcB] --compressed--> [wireA|wireB] --> [dstA|dstB] <-> page server
	srcA, srcB := net.Pipe()
	wireA, wireB := net.Pipe()
	dstA, dstB := net.Pipe()
	var sc, rc Counts
	go func() { SendCompressed(wireA, srcB, &sc); wireA.Close() }()
	go func() { ReceiveCompressed(dstA, wireB, &rc); dstA.Close() }()
	// answers flow back uncompressed
	go io.Copy(srcB, wireA)
	go io.Copy(wireB, dstA)

	page := bytes.Repeat([]byte("compressible page "), 4096)
	done := make(chan error, 1)
	go func() {
		buf := make([]byte, len(page))
		for i := 0; i < 5; i++ {
			if _, err := io.ReadFull(dstB, buf); err != nil {
				done <- err
				return
			}
			if !bytes.Equal(buf, page) {
				done <- errors.New("page corrupted")
				return
			}
		}
		// the "flush" command and its answer
		var cmd [4]byte
		if _, err := io.ReadFull(dstB, cmd[:]); err != nil {
			done <- err
			return
		}
		done <- nil
	}()
	for i := 0; i < 5; i++ {
		if _, err := srcA.Write(page); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := srcA.Write([]byte("FLSH")); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the last command was held in the compressor")
	}
	if raw, wire := sc.Raw.Load(), sc.Wire.Load(); raw != int64(5*len(page)+4) || wire >= raw/10 {
		t.Errorf("raw %d, wire %d: want all bytes counted and good compression", raw, wire)
	}
}
