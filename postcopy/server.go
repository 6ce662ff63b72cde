package postcopy

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync/atomic"

	"github.com/phaul/phaul/criu"
)

// MaxAnswer bounds the pages of one answer: a request for more is
// answered in part, and CRIU's daemon asks again for the rest (as CRIU's
// own server answers from one pipe at a time).
const MaxAnswer = 256

// Stats counts what a server answered.
type Stats struct {
	Requests atomic.Int64
	Pages    atomic.Int64
}

// Serve answers the lazy-pages daemon's requests read from conn with pages
// of snap until the daemon says it is done (PS_IOV_CLOSE or
// PS_IOV_FORCE_CLOSE, answered with status 0: every page arrived), ctx
// ends (conn is closed), or a request cannot be answered. stats may be
// nil.
func Serve(ctx context.Context, conn io.ReadWriteCloser, snap *Snapshot, stats *Stats) error {
	if stats == nil {
		stats = new(Stats)
	}
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	var hdr [criu.PageIovSize]byte
	buf := make([]byte, criu.PageIovSize+MaxAnswer*criu.PageSize)
	for {
		h, err := criu.ReadPageIov(conn, &hdr)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if errors.Is(err, io.EOF) {
				return errors.New("page requests: the lazy-pages daemon left without saying it was done")
			}
			return fmt.Errorf("page requests: %w", err)
		}
		switch h.Cmd {
		case criu.PSIovClose, criu.PSIovForceClose:
			_, err := conn.Write(binary.NativeEndian.AppendUint32(nil, 0))
			return err
		case criu.PSIovGet:
		default:
			return fmt.Errorf("page requests: %w: command %d", criu.ErrPageWire, h.Cmd)
		}
		want := min(h.NrPages, MaxAnswer)
		n, err := snap.Read(h.DstID, h.Vaddr, buf[criu.PageIovSize:criu.PageIovSize+want*criu.PageSize])
		if err != nil {
			return fmt.Errorf("page request for %d pages at %#x of task %d: %w", h.NrPages, h.Vaddr, h.DstID, err)
		}
		_ = criu.LazyAnswer(h, uint64(n)).Append(buf[:0]) // into buf, before the pages
		if _, err := conn.Write(buf[:criu.PageIovSize+n*criu.PageSize]); err != nil {
			return fmt.Errorf("page answer: %w", err)
		}
		stats.Requests.Add(1)
		stats.Pages.Add(int64(n))
	}
}
