package migrate

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"runtime/debug"
	"sync"
	"time"

	"github.com/phaul/phaul/transport"
)

// ErrServerClosed is returned by Serve after Shutdown.
var ErrServerClosed = errors.New("phaul-service: server closed")

// Server accepts migrations on a listener, each on its own connection,
// and hands them to a Destination, like net/http's Server: Serve, then
// Shutdown.
type Server struct {
	TLS    *tls.Config
	Dest   *Destination
	Logger *slog.Logger

	mu       sync.Mutex
	ln       net.Listener
	closing  bool
	active   int
	wg       sync.WaitGroup
	ctx      context.Context
	cancel   context.CancelFunc
	initOnce sync.Once
}

func (s *Server) init() {
	s.initOnce.Do(func() {
		s.ctx, s.cancel = context.WithCancel(context.Background())
		if s.Logger == nil {
			s.Logger = slog.Default()
		}
	})
}

// Serve accepts connections until Shutdown. Each connection must pass the
// TLS handshake (client certificate signed by the configured CA) before
// anything else happens; a refused one is logged and closed.
func (s *Server) Serve(ln net.Listener) error {
	s.init()
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		return ErrServerClosed
	}
	s.ln = ln
	s.mu.Unlock()
	for {
		conn, err := ln.Accept()
		if err != nil {
			s.mu.Lock()
			closing := s.closing
			s.mu.Unlock()
			if closing {
				return ErrServerClosed
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				time.Sleep(100 * time.Millisecond)
				continue
			}
			return err
		}
		s.wg.Add(1)
		go s.handle(conn)
	}
}

func (s *Server) handle(conn net.Conn) {
	defer s.wg.Done()
	log := s.Logger.With("peer", conn.RemoteAddr().String())
	sess, err := transport.Serve(s.ctx, conn, s.TLS)
	if err != nil {
		log.Warn("connection refused", "err", err)
		return
	}
	defer sess.Close()
	s.mu.Lock()
	s.active++
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.active--
		idle := s.active == 0
		s.mu.Unlock()
		if idle {
			// A migration passes hundreds of MiB through short-lived
			// buffers (and the binaries run with a high GOGC): give the
			// memory back rather than sit on it between migrations.
			debug.FreeOSMemory()
		}
	}()
	log.Info("client authenticated", "cn", sess.PeerCommonName())
	if err := s.Dest.Serve(s.ctx, sess); err != nil {
		log.Warn("migration ended with an error", "err", err)
	}
	// Let the source hang up first: closing with its last frames unread
	// could reset the connection before it has read our last message.
	select {
	case <-sess.Done():
	case <-time.After(hangupGrace):
	}
}

// hangupGrace is how long the service waits for the source to hang up
// after a migration ended.
const hangupGrace = 5 * time.Second

// Active returns the number of migrations in flight.
func (s *Server) Active() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.active
}

// Shutdown stops accepting connections and waits for the migrations in
// flight to finish. When ctx ends first, it cancels them: a migration not
// yet restored is aborted (the source resumes its copy); one restored and
// waiting for the source's commit keeps its stopped tree, in doubt.
func (s *Server) Shutdown(ctx context.Context) error {
	s.init()
	s.mu.Lock()
	s.closing = true
	if s.ln != nil {
		s.ln.Close()
	}
	s.mu.Unlock()
	done := make(chan struct{})
	go func() {
		s.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		s.cancel()
		return nil
	case <-ctx.Done():
		s.cancel()
		<-done
		return ctx.Err()
	}
}
