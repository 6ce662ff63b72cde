package transport

import (
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"net"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// pageData is n bytes like the workload's memory: the first half random,
// the second half text that compresses.
func pageData(n int) []byte {
	b := make([]byte, n)
	rand.Read(b[:n/2])
	for off := n / 2; off < n; off += 4096 {
		line := fmt.Sprintf("page %08d generation %08d ", off/4096, 0)
		for i := off; i < off+4096 && i < n; i += len(line) {
			copy(b[i:min(off+4096, n)], line)
		}
	}
	return b
}

func sockpair(b *testing.B) (*os.File, *os.File) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		b.Fatal(err)
	}
	return os.NewFile(uintptr(fds[0]), "a"), os.NewFile(uintptr(fds[1]), "b")
}

// tlsSessions connects a client and a server session over loopback TCP
// with mutual TLS, as a migration does.
func tlsSessions(b *testing.B) (*Session, *Session) {
	dir := b.TempDir()
	if err := GenerateCerts(dir, nil, time.Hour, false); err != nil {
		b.Fatal(err)
	}
	sconf, err := ServerTLS(dir)
	if err != nil {
		b.Fatal(err)
	}
	cconf, err := ClientTLS(dir, "")
	if err != nil {
		b.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	ch := make(chan *Session, 1)
	go func() {
		raw, err := ln.Accept()
		if err != nil {
			ch <- nil
			return
		}
		s, _ := Serve(context.Background(), raw, sconf)
		ch <- s
	}()
	c, err := Dial(context.Background(), ln.Addr().String(), cconf)
	if err != nil {
		b.Fatal(err)
	}
	s := <-ch
	if s == nil {
		b.Fatal("server session failed")
	}
	b.Cleanup(func() { c.Close(); s.Close() })
	return c, s
}

// BenchmarkPagePump moves 256 MiB of workload-like pages the way a
// migration does: a socketpair from CRIU, the compressing pump, a yamux
// stream over TLS over TCP, the decompressing pump, a socketpair to the
// page server.
func BenchmarkPagePump(b *testing.B) {
	const size = 256 << 20
	data := pageData(size)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		c, s := tlsSessions(b)
		ctx := context.Background()
		accepted := make(chan io.ReadWriteCloser, 1)
		go func() {
			_, st, err := s.Accept(ctx)
			if err != nil {
				b.Error(err)
			}
			accepted <- st
		}()
		st, err := c.Open(ctx, KindPages)
		if err != nil {
			b.Fatal(err)
		}
		criuEnd, pumpIn := sockpair(b)
		psEnd, pumpOut := sockpair(b)
		var sc, rc Counts
		b.SetBytes(size)
		b.StartTimer()
		go func() {
			for off := 0; off < size; off += 1 << 20 {
				criuEnd.Write(data[off : off+1<<20])
			}
			unix.Shutdown(int(criuEnd.Fd()), unix.SHUT_WR)
		}()
		sent := make(chan error, 1)
		go func() { sent <- SendCompressed(st, pumpIn, &sc); st.Close() }()
		recvd := make(chan error, 1)
		go func() {
			rs := <-accepted
			recvd <- ReceiveCompressed(pumpOut, rs, &rc)
			unix.Shutdown(int(pumpOut.Fd()), unix.SHUT_WR)
		}()
		n, err := io.Copy(io.Discard, psEnd)
		if err != nil || n != size {
			b.Fatalf("received %d bytes, %v", n, err)
		}
		if err := <-sent; err != nil {
			b.Fatal(err)
		}
		if err := <-recvd; err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(float64(sc.Wire.Load())/float64(sc.Raw.Load()), "wire/raw")
		for _, f := range []*os.File{criuEnd, pumpIn, psEnd, pumpOut} {
			f.Close()
		}
	}
}
