package precopy

import (
	"crypto/rand"
	"fmt"

	"github.com/minio/highwayhash"
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
