package transport

import (
	"bytes"
	"context"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/phaul/phaul/internal/pb"
)

// TestFilesRoundTrip: files written by a FileWriter come out of
// ReceiveFiles with their headers and content, in order.
func TestFilesRoundTrip(t *testing.T) {
	var wire bytes.Buffer
	var c Counts
	w, err := NewFileWriter(&wire, &c)
	if err != nil {
		t.Fatal(err)
	}
	sent := []*pb.CarriedFile{
		{Path: "/srv/app/data", How: "whole", Length: 5, Mode: 0o640, Uid: 7},
		{Path: "/var/log/app.log", How: "tail", Offset: 100, Length: 3},
		{Path: "/empty", How: "replace"},
	}
	contents := []string{"hello", "end", ""}
	for i, h := range sent {
		if err := w.Send(context.Background(), h, strings.NewReader(contents[i]+"trailing")); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	var got []string
	var rc Counts
	files, total, err := ReceiveFiles(context.Background(), &wire, &rc, func(h *pb.CarriedFile, r io.Reader) error {
		b, err := io.ReadAll(r)
		got = append(got, h.Path+"="+string(b))
		return err
	})
	if err != nil || files != 3 || total != 8 {
		t.Fatalf("%d files, %d bytes: %v", files, total, err)
	}
	if strings.Join(got, " ") != "/srv/app/data=hello /var/log/app.log=end /empty=" {
		t.Errorf("received %v", got)
	}
	if rc.Wire.Load() != c.Wire.Load() || rc.Wire.Load() == 0 {
		t.Errorf("wire bytes: sent %d, received %d", c.Wire.Load(), rc.Wire.Load())
	}
}

// TestFilesRefused: headers a receiver must refuse, and content left
// unread by the placer.
func TestFilesRefused(t *testing.T) {
	end := filesFrame(&pb.CarriedFile{}, "")
	tests := []struct {
		name string
		data []byte
		want string
	}{
		{"relative", filesFrame(&pb.CarriedFile{Path: "etc/passwd", How: "whole"}, ""), "absolute"},
		{"dot-dot", filesFrame(&pb.CarriedFile{Path: "/srv/../etc/passwd", How: "whole"}, ""), "clean"},
		{"unknown way", filesFrame(&pb.CarriedFile{Path: "/a", How: "append"}, ""), "unknown way"},
		{"offset of a whole file", filesFrame(&pb.CarriedFile{Path: "/a", How: "whole", Offset: 3}, ""), "offset 3"},
		{"cut short", filesFrame(&pb.CarriedFile{Path: "/a", How: "whole", Length: 10}, "abc"), "unread"},
		{"no end", filesFrame(&pb.CarriedFile{Path: "/a", How: "whole", Length: 1}, "x"), "EOF"},
		{"huge header", append([]byte{0, 1, 0, 1}, end...), "header of"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := ReadFiles(context.Background(), bytes.NewReader(tt.data), func(h *pb.CarriedFile, r io.Reader) error {
				_, err := io.Copy(io.Discard, r)
				if tt.name == "cut short" {
					return nil // a placer that stopped early
				}
				return err
			})
			if !errors.Is(err, ErrBadFiles) || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("got %v, want ErrBadFiles saying %q", err, tt.want)
			}
		})
	}
}
