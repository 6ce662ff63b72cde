package transport

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/phaul/phaul/internal/pb"
)

func certDir(t *testing.T, hosts ...string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "tls")
	if err := GenerateCerts(dir, hosts, time.Hour, false); err != nil {
		t.Fatal(err)
	}
	return dir
}

// serve accepts one connection on a loopback listener with the service's
// TLS config from dir and reports the session or error.
func serve(t *testing.T, dir string) (string, chan error) {
	t.Helper()
	conf, err := ServerTLS(dir)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	ch := make(chan error, 1)
	go func() {
		raw, err := ln.Accept()
		if err != nil {
			ch <- err
			return
		}
		s, err := Serve(context.Background(), raw, conf)
		if err == nil {
			// The client's first message must arrive.
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			_, err = s.Control().Recv(ctx)
			if err == nil {
				// The client asserts it got the reply; yamux may report
				// a delivered last write as failed if the client hangs
				// up at once, so its error is not the test's.
				s.Control().Send(ctx, &pb.Envelope{Msg: &pb.Envelope_Done{Done: &pb.Done{Pid: 1}}})
			}
			cancel()
			// Hang up after the client, as phaul-service does.
			select {
			case <-s.Done():
			case <-time.After(5 * time.Second):
			}
			s.Close()
		}
		ch <- err
	}()
	return ln.Addr().String(), ch
}

func TestMutualTLS(t *testing.T) {
	dir := certDir(t)
	addr, srv := serve(t, dir)
	conf, err := ClientTLS(dir, "")
	if err != nil {
		t.Fatal(err)
	}
	s, err := Dial(context.Background(), addr, conf)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	if cn := s.PeerCommonName(); cn != "phaul-service" {
		t.Errorf("peer CN %q", cn)
	}
	if err := s.Control().Send(context.Background(), &pb.Envelope{Msg: &pb.Envelope_Commit{Commit: &pb.Commit{}}}); err != nil {
		t.Fatalf("send: %v", err)
	}
	if m, err := s.Control().Recv(context.Background()); err != nil || m.GetDone() == nil {
		t.Fatalf("reply: %v %v", m, err)
	}
	s.Close()
	if err := <-srv; err != nil {
		t.Fatalf("serve: %v", err)
	}
}

func TestTLSRefusals(t *testing.T) {
	good := certDir(t)
	other := certDir(t) // another CA
	// A client certificate from another CA: the service refuses it.
	t.Run("client from another CA", func(t *testing.T) {
		addr, srv := serve(t, good)
		conf, _ := ClientTLS(other, "")
		conf.RootCAs, _ = loadCA(good) // trusts the server, but is not trusted
		_, err := Dial(context.Background(), addr, conf)
		if !errors.Is(err, ErrAuth) {
			t.Errorf("client: want ErrAuth, got %v", err)
		}
		if err := <-srv; !errors.Is(err, ErrAuth) {
			t.Errorf("server: want ErrAuth, got %v", err)
		}
	})
	t.Run("server from another CA", func(t *testing.T) {
		addr, srv := serve(t, other)
		conf, _ := ClientTLS(good, "")
		_, err := Dial(context.Background(), addr, conf)
		if !errors.Is(err, ErrAuth) || !strings.Contains(err.Error(), "same `phaul certs` directory") {
			t.Errorf("client: want ErrAuth with advice, got %v", err)
		}
		<-srv
	})
	t.Run("no client certificate", func(t *testing.T) {
		addr, srv := serve(t, good)
		conf, _ := ClientTLS(good, "")
		conf.Certificates = nil
		_, err := Dial(context.Background(), addr, conf)
		if err == nil {
			t.Error("client without certificate connected")
		}
		if err := <-srv; !errors.Is(err, ErrAuth) {
			t.Errorf("server: want ErrAuth, got %v", err)
		}
	})
	t.Run("server certificate used as client", func(t *testing.T) {
		addr, srv := serve(t, good)
		conf, _ := ClientTLS(good, "")
		conf.Certificates = nil
		pair, err := loadPair(good, ServerCertFile, ServerKeyFile)
		if err != nil {
			t.Fatal(err)
		}
		conf.Certificates = append(conf.Certificates, pair)
		if _, err := Dial(context.Background(), addr, conf); err == nil {
			t.Error("server certificate accepted as a client's")
		}
		if err := <-srv; err == nil {
			t.Error("server accepted a server certificate from a client")
		}
	})
	t.Run("unreachable", func(t *testing.T) {
		conf, _ := ClientTLS(good, "")
		ln, _ := net.Listen("tcp", "127.0.0.1:0")
		addr := ln.Addr().String()
		ln.Close()
		_, err := Dial(context.Background(), addr, conf)
		if err == nil || !strings.Contains(err.Error(), "is phaul-service running") {
			t.Errorf("got %v", err)
		}
	})
	t.Run("missing directory", func(t *testing.T) {
		_, err := ClientTLS(filepath.Join(t.TempDir(), "nope"), "")
		if err == nil || !strings.Contains(err.Error(), "phaul certs DIR") {
			t.Errorf("got %v", err)
		}
	})
}

func TestGenerateCertsRefusesOverwrite(t *testing.T) {
	dir := certDir(t)
	if err := GenerateCerts(dir, nil, time.Hour, false); err == nil {
		t.Fatal("overwrote existing certificates")
	}
	if _, err := os.Stat(filepath.Join(dir, "ca-key.pem")); err == nil {
		t.Error("CA key kept without keepCAKey")
	}
	st, err := os.Stat(filepath.Join(dir, ServerKeyFile))
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("server key mode: %v %v", st.Mode(), err)
	}
}

// TestReloadableTLS: after new certificates are written to the directory
// and Reload is called (phaul-service does on SIGHUP), handshakes use
// them; before, the old ones.
func TestReloadableTLS(t *testing.T) {
	dir := certDir(t)
	r, err := NewReloadableTLS(dir)
	if err != nil {
		t.Fatal(err)
	}
	handshake := func(clientDir string) error {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		go func() {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			tc := tls.Server(c, r.Config())
			tc.Handshake()
			time.Sleep(100 * time.Millisecond)
			tc.Close()
		}()
		conf, err := ClientTLS(clientDir, "")
		if err != nil {
			t.Fatal(err)
		}
		c, err := tls.Dial("tcp", ln.Addr().String(), conf)
		if err != nil {
			return err
		}
		defer c.Close()
		// TLS 1.3: the server's verdict on the client's certificate
		// arrives with the first read.
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		_, err = c.Read(make([]byte, 1))
		if errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, io.EOF) {
			return nil
		}
		return err
	}
	if err := handshake(dir); err != nil {
		t.Fatalf("the first certificates: %v", err)
	}
	fresh := certDir(t)
	for _, f := range []string{CAFile, ServerCertFile, ServerKeyFile} {
		data, err := os.ReadFile(filepath.Join(fresh, f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, f), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := handshake(fresh); err == nil {
		t.Fatal("new certificates accepted before Reload")
	}
	if err := r.Reload(); err != nil {
		t.Fatal(err)
	}
	if err := handshake(fresh); err != nil {
		t.Errorf("new certificates after Reload: %v", err)
	}
	if err := handshake(dir); err == nil {
		t.Errorf("a client of the old CA accepted after Reload")
	}
	// A broken directory keeps the last good configuration.
	os.WriteFile(filepath.Join(dir, ServerKeyFile), []byte("junk"), 0o600)
	if err := r.Reload(); err == nil {
		t.Error("Reload accepted a broken key")
	}
	if err := handshake(fresh); err != nil {
		t.Errorf("after a failed Reload: %v", err)
	}
}
