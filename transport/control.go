package transport

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/phaul/phaul/internal/pb"
)

// Errors of the control stream that a caller may branch on.
var (
	ErrFrameTooLarge  = errors.New("control frame too large")
	ErrUnknownMessage = errors.New("unknown control message")
	ErrMalformed      = errors.New("malformed control message") // not a protobuf Envelope
)

// Control is the control stream: one length-prefixed protobuf Envelope per
// frame (a 4-byte big-endian length, then the message). Send and Recv are
// each safe for one goroutine at a time.
type Control struct {
	st  net.Conn
	rmu sync.Mutex
	wmu sync.Mutex
}

func newControl(st net.Conn) *Control { return &Control{st: st} }

// Send writes one message; ctx bounds the write.
func (c *Control) Send(ctx context.Context, m *pb.Envelope) error {
	data, err := proto.Marshal(m)
	if err != nil {
		return fmt.Errorf("encode %s: %w", MessageName(m), err)
	}
	if len(data) > MaxFrameSize {
		return fmt.Errorf("send %s: %w (%d bytes)", MessageName(m), ErrFrameTooLarge, len(data))
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	frame := make([]byte, 4+len(data))
	binary.BigEndian.PutUint32(frame, uint32(len(data)))
	copy(frame[4:], data)
	stop := deadline(ctx, c.st.SetWriteDeadline)
	defer stop()
	if _, err := c.st.Write(frame); err != nil {
		return fmt.Errorf("send %s: %w", MessageName(m), ctxErr(ctx, err))
	}
	return nil
}

// Recv reads one message; ctx bounds the wait.
func (c *Control) Recv(ctx context.Context) (*pb.Envelope, error) {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	stop := deadline(ctx, c.st.SetReadDeadline)
	defer stop()
	data, err := ReadFrame(c.st)
	if err != nil {
		return nil, fmt.Errorf("receive: %w", ctxErr(ctx, err))
	}
	return DecodeEnvelope(data)
}

// ReadFrame reads one length-prefixed frame, refusing frames larger than
// MaxFrameSize before reading them.
func ReadFrame(r io.Reader) ([]byte, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, err
	}
	n := binary.BigEndian.Uint32(hdr[:])
	if n > MaxFrameSize {
		return nil, fmt.Errorf("%w: %d bytes announced, limit %d", ErrFrameTooLarge, n, MaxFrameSize)
	}
	data := make([]byte, n)
	if _, err := io.ReadFull(r, data); err != nil {
		return nil, fmt.Errorf("frame of %d bytes: %w", n, err)
	}
	return data, nil
}

// DecodeEnvelope decodes one control message; a message with no known
// field set is ErrUnknownMessage.
func DecodeEnvelope(data []byte) (*pb.Envelope, error) {
	m := &pb.Envelope{}
	if err := proto.Unmarshal(data, m); err != nil {
		return nil, fmt.Errorf("%w: decode control message: %v", ErrMalformed, err)
	}
	if m.Msg == nil {
		return nil, ErrUnknownMessage
	}
	return m, nil
}

// MessageName names the message in an envelope ("Hello", "Commit"), for
// logs and errors; "unknown" when none is set.
func MessageName(m *pb.Envelope) string {
	r := m.ProtoReflect()
	fd := r.WhichOneof(r.Descriptor().Oneofs().ByName("msg"))
	if fd == nil {
		return "unknown"
	}
	return string(fd.Message().Name())
}

// deadline applies ctx's deadline and cancellation to a connection's
// read or write deadline; the returned func undoes it.
func deadline(ctx context.Context, set func(time.Time) error) func() {
	if dl, ok := ctx.Deadline(); ok {
		set(dl)
	}
	stop := context.AfterFunc(ctx, func() { set(time.Now()) })
	return func() {
		stop()
		set(time.Time{})
	}
}

// ctxErr prefers the context's error over the timeout it caused (the
// connection's deadline may fire a moment before the context's timer).
func ctxErr(ctx context.Context, err error) error {
	if cerr := ctx.Err(); cerr != nil {
		return fmt.Errorf("%w (%v)", cerr, err)
	}
	var ne net.Error
	if dl, ok := ctx.Deadline(); ok && errors.As(err, &ne) && ne.Timeout() && !time.Now().Before(dl) {
		return fmt.Errorf("%w (%v)", context.DeadlineExceeded, err)
	}
	return err
}
