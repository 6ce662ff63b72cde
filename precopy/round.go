package precopy

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/phaul/phaul/criu"
)

// RoundStats is what one pre-copy round did.
type RoundStats struct {
	Stats
	Wire int64 // bytes on the network (set by the caller, who knows the stream)
	// HeldBytes is what the rounds' pages occupy on the destination
	// after this one, as it says (set by the caller).
	HeldBytes int64
	Duration  time.Duration
}

// Round reads the memory of every task of the tree (running) and writes it
// through e, which must have been made with record set; Replies must be
// reading the page server's answers. Tasks that exit meanwhile are left
// out. On success the caller sweeps the table once the page server has
// stored the round.
func Round(ctx context.Context, e *Encoder, tasks []Task) (RoundStats, error) {
	start := time.Now()
	shared := sharedPages{}
	for _, t := range tasks {
		if err := ctx.Err(); err != nil {
			return RoundStats{}, err
		}
		if err := roundTask(ctx, e, t, shared); err != nil {
			return RoundStats{}, fmt.Errorf("round: task %d: %w", t.Pid, err)
		}
	}
	if err := sendShared(ctx, e, shared); err != nil {
		return RoundStats{}, fmt.Errorf("round: %w", err)
	}
	done, err := e.Close()
	if err != nil {
		return RoundStats{}, fmt.Errorf("round: %w", err)
	}
	if err := wait(ctx, done); err != nil {
		return RoundStats{}, fmt.Errorf("round: %w", err)
	}
	return RoundStats{Stats: e.Stats(), Duration: time.Since(start)}, nil
}

// roundTask sends a task's private memory, and adds the pages of shared
// memory present in its mappings to shared.
func roundTask(ctx context.Context, e *Encoder, t Task, shared sharedPages) error {
	private, mapped, err := regions(t.Pid)
	if err != nil {
		return nil // exited since the tree was listed
	}
	m, err := openMem(t.Pid)
	if err != nil {
		return nil
	}
	defer m.close()
	for _, s := range mapped {
		if err := m.present(s, shared); errors.Is(err, errGone) {
			return nil
		}
	}
	done, err := e.Open(criu.PageDst(criu.PSTypePid, t.ID))
	if err != nil {
		return err
	}
	// Like CRIU, wait for the page server to say whether it has a parent
	// image before sending pages that might refer to it.
	if err := wait(ctx, done); err != nil {
		return err
	}
	var spans []span
	for _, r := range private {
		for va := r.start; va < r.end; {
			var err error
			spans, va, err = m.batch(r, va, spans)
			if errors.Is(err, errGone) {
				return nil
			}
			if err != nil {
				return err
			}
			for _, s := range spans {
				if err := e.Pages(s.vaddr, m.buf[s.off:s.off+int(s.n*criu.PageSize)]); err != nil {
					return err
				}
			}
		}
		if err := ctx.Err(); err != nil {
			return err
		}
	}
	return nil
}
