// Package transport is the connection between phaul's source agent and
// phaul-service: TCP with mutual TLS 1.3, multiplexed by yamux into one
// control stream of length-prefixed protobuf messages and data streams
// (pages, images) identified by their first byte. It frames and bounds
// the bytes; what the messages mean belongs to package migrate.
//
// docs/protocol.md is the written specification; the wire constants are in
// const.go.
package transport

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"time"

	"github.com/hashicorp/yamux"
)

// Session is one authenticated, multiplexed connection: one migration.
type Session struct {
	conn    net.Conn
	mux     *yamux.Session
	control *Control
}

func yamuxConfig() *yamux.Config {
	cfg := yamux.DefaultConfig()
	cfg.EnableKeepAlive = true
	cfg.KeepAliveInterval = keepAlive
	cfg.ConnectionWriteTimeout = writeTimeout
	// Pages stream in bulk: a larger window keeps a fast link busy.
	cfg.MaxStreamWindowSize = 16 << 20
	cfg.Logger = nil
	cfg.LogOutput = io.Discard
	return cfg
}

// Dial connects to a phaul-service at addr, authenticates both sides with
// conf, and opens the control stream. Errors say whether the service could
// not be reached or the certificates did not match (errors.Is(err,
// ErrAuth)).
func Dial(ctx context.Context, addr string, conf *tls.Config) (*Session, error) {
	d := net.Dialer{Timeout: handshakeTimeout, KeepAlive: keepAlive}
	raw, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w (is phaul-service running there and the port reachable?)", addr, err)
	}
	hctx, cancel := context.WithTimeout(ctx, handshakeTimeout)
	defer cancel()
	tc := tls.Client(raw, conf)
	if err := tc.HandshakeContext(hctx); err != nil {
		raw.Close()
		return nil, fmt.Errorf("connect to %s: %w", addr, classifyTLS(err))
	}
	// TLS 1.3: a server that rejects our certificate says so only on the
	// first read, so the server's first byte says it accepted us.
	tc.SetReadDeadline(time.Now().Add(handshakeTimeout))
	var b [1]byte
	if _, err := io.ReadFull(tc, b[:]); err != nil || b[0] != Accepted {
		tc.Close()
		if err == nil {
			err = fmt.Errorf("%w: first byte %q, want %q", errBadAccept, b[0], Accepted)
		}
		return nil, fmt.Errorf("connect to %s: %w", addr, classifyTLS(err))
	}
	tc.SetReadDeadline(time.Time{})
	s, err := NewClientSession(ctx, tc)
	if err != nil {
		tc.Close()
		return nil, fmt.Errorf("connect to %s: %w", addr, classifyTLS(err))
	}
	return s, nil
}

// classifyTLS marks certificate problems as ErrAuth.
func classifyTLS(err error) error {
	var (
		ue  x509.UnknownAuthorityError
		he  x509.HostnameError
		ce  x509.CertificateInvalidError
		ae  tls.AlertError
		vre *tls.CertificateVerificationError
	)
	switch {
	case errors.As(err, &ue), errors.As(err, &he), errors.As(err, &ce), errors.As(err, &vre):
		return &authError{err}
	case errors.As(err, &ae), isRemoteAlert(err):
		// bad_certificate (42), unknown_ca (48), certificate_required (116), ...
		return &authError{err}
	case strings.Contains(err.Error(), "didn't provide a certificate"):
		// crypto/tls has no typed error for a client without one.
		return &authError{err}
	}
	return err
}

// isRemoteAlert reports whether err is a TLS alert the peer sent: over
// TCP, crypto/tls returns those as a *net.OpError with Op "remote error".
func isRemoteAlert(err error) bool {
	var oe *net.OpError
	return errors.As(err, &oe) && oe.Op == "remote error"
}

// NewClientSession starts the client side of a session on conn, which
// must already be authenticated (Dial does TLS; tests may pass a pipe),
// and opens the control stream.
func NewClientSession(ctx context.Context, conn net.Conn) (*Session, error) {
	mux, err := yamux.Client(conn, yamuxConfig())
	if err != nil {
		return nil, fmt.Errorf("yamux: %w", err)
	}
	s := &Session{conn: conn, mux: mux}
	st, err := s.Open(ctx, KindControl)
	if err != nil {
		mux.Close()
		return nil, err
	}
	s.control = newControl(st)
	return s, nil
}

var errBadAccept = errors.New("not a phaul-service")

// Serve authenticates an accepted connection with conf and accepts its
// control stream. The handshake is bounded by a timeout so that a client
// that says nothing cannot hold the service.
func Serve(ctx context.Context, raw net.Conn, conf *tls.Config) (*Session, error) {
	hctx, cancel := context.WithTimeout(ctx, handshakeTimeout)
	defer cancel()
	tc := tls.Server(raw, conf)
	if err := tc.HandshakeContext(hctx); err != nil {
		raw.Close()
		return nil, fmt.Errorf("tls handshake with %s: %w", raw.RemoteAddr(), classifyTLS(err))
	}
	tc.SetWriteDeadline(time.Now().Add(handshakeTimeout))
	if _, err := tc.Write([]byte{Accepted}); err != nil {
		tc.Close()
		return nil, fmt.Errorf("session with %s: %w", raw.RemoteAddr(), err)
	}
	tc.SetWriteDeadline(time.Time{})
	s, err := NewServerSession(hctx, tc)
	if err != nil {
		tc.Close()
		return nil, fmt.Errorf("session with %s: %w", raw.RemoteAddr(), err)
	}
	return s, nil
}

// NewServerSession starts the server side of a session on an
// authenticated conn and accepts the control stream.
func NewServerSession(ctx context.Context, conn net.Conn) (*Session, error) {
	mux, err := yamux.Server(conn, yamuxConfig())
	if err != nil {
		return nil, fmt.Errorf("yamux: %w", err)
	}
	s := &Session{conn: conn, mux: mux}
	kind, st, err := s.Accept(ctx)
	if err != nil {
		mux.Close()
		return nil, fmt.Errorf("accept control stream: %w", err)
	}
	if kind != KindControl {
		mux.Close()
		return nil, fmt.Errorf("first stream is of kind %q, want the control stream", kind)
	}
	s.control = newControl(st)
	return s, nil
}

// Control returns the session's control stream.
func (s *Session) Control() *Control { return s.control }

// LocalAddr is this end's address.
func (s *Session) LocalAddr() net.Addr { return s.conn.LocalAddr() }

// RemoteAddr is the peer's address.
func (s *Session) RemoteAddr() net.Addr { return s.conn.RemoteAddr() }

// PeerCommonName is the common name of the peer's certificate, if any.
func (s *Session) PeerCommonName() string {
	if tc, ok := s.conn.(*tls.Conn); ok {
		if st := tc.ConnectionState(); len(st.PeerCertificates) > 0 {
			return st.PeerCertificates[0].Subject.CommonName
		}
	}
	return ""
}

// Open opens a data stream of the given kind.
func (s *Session) Open(ctx context.Context, kind byte) (net.Conn, error) {
	st, err := s.mux.OpenStream()
	if err != nil {
		return nil, fmt.Errorf("open %s stream: %w", KindName(kind), err)
	}
	stop := context.AfterFunc(ctx, func() { st.Close() })
	defer stop()
	if _, err := st.Write([]byte{kind}); err != nil {
		st.Close()
		return nil, fmt.Errorf("open %s stream: %w", KindName(kind), err)
	}
	return st, nil
}

// Accept waits for the peer to open a stream and returns its kind.
func (s *Session) Accept(ctx context.Context) (byte, net.Conn, error) {
	st, err := s.mux.AcceptStreamWithContext(ctx)
	if err != nil {
		return 0, nil, err
	}
	var kind [1]byte
	st.SetReadDeadline(time.Now().Add(handshakeTimeout))
	if _, err := io.ReadFull(st, kind[:]); err != nil {
		st.Close()
		return 0, nil, fmt.Errorf("read stream kind: %w", err)
	}
	st.SetReadDeadline(time.Time{})
	switch kind[0] {
	case KindControl, KindPages, KindImages, KindRound, KindFiles, KindLazy:
		return kind[0], st, nil
	}
	st.Close()
	return 0, nil, fmt.Errorf("unknown stream kind %q", kind[0])
}

// Done is closed when the session ends (closed, or the connection died).
func (s *Session) Done() <-chan struct{} { return s.mux.CloseChan() }

// Close ends the session and its connection.
func (s *Session) Close() error {
	err := s.mux.Close()
	s.conn.Close()
	return err
}

// KindName names a stream kind for messages.
func KindName(kind byte) string {
	switch kind {
	case KindControl:
		return "control"
	case KindPages:
		return "pages"
	case KindImages:
		return "images"
	case KindRound:
		return "round"
	case KindFiles:
		return "files"
	case KindLazy:
		return "lazy"
	}
	return fmt.Sprintf("unknown(%q)", kind)
}
