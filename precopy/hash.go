package precopy

import (
	"crypto/rand"
	"fmt"
	"runtime"
	"sync"

	"github.com/minio/highwayhash"

	"github.com/phaul/phaul/criu"
)

// Sum is the keyed hash of one page.
type Sum [16]byte

// Hasher hashes pages with a key of its own (HighwayHash-128, about
// 10 GB/s on one core here): without the key no workload can make two
// pages of different content collide.
type Hasher struct {
	key [32]byte
}

// NewHasher returns a hasher with a fresh random key.
func NewHasher() (*Hasher, error) {
	h := &Hasher{}
	if _, err := rand.Read(h.key[:]); err != nil {
		return nil, fmt.Errorf("hash key: %w", err)
	}
	return h, nil
}

// Sum hashes one page.
func (h *Hasher) Sum(page []byte) Sum { return highwayhash.Sum128(page, h.key[:]) }

// parallelPages is the least pages SumAll shares among goroutines.
const parallelPages = 64

// SumAll hashes the pages of data (whole pages) into sums, on as many
// goroutines as there are CPUs for long runs: the source hashes every
// page while the tree is frozen.
func (h *Hasher) SumAll(data []byte, sums []Sum) {
	n := len(data) / criu.PageSize
	sum := func(from, to int) {
		for i := from; i < to; i++ {
			sums[i] = h.Sum(data[i*criu.PageSize : (i+1)*criu.PageSize])
		}
	}
	workers := min(runtime.GOMAXPROCS(0), n/parallelPages)
	if workers <= 1 {
		sum(0, n)
		return
	}
	var wg sync.WaitGroup
	per := (n + workers - 1) / workers
	for start := 0; start < n; start += per {
		wg.Go(func() { sum(start, min(start+per, n)) })
	}
	wg.Wait()
}
