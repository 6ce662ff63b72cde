package precheck

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/phaul/phaul/internal/pb"
)

// maxHead bounds the head of a written file that is hashed (SameFile).
const maxHead = 1 << 20

// headSum is the sha256 of the first n bytes of path.
func headSum(path string, n uint64) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if m, err := io.CopyN(h, f, int64(n)); err != nil {
		return "", fmt.Errorf("%s: %d of its first %d bytes: %w", path, m, n, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func inodeOf(st os.FileInfo) uint64 {
	if s, ok := st.Sys().(*syscall.Stat_t); ok {
		return s.Ino
	}
	return 0
}

// fsMagic is the type of the filesystem holding path (statfs f_type).
func fsMagic(path string) int64 {
	var s unix.Statfs_t
	if unix.Statfs(path, &s) != nil {
		return 0
	}
	return int64(s.Type)
}

// SameFile says whether the file at ff.Path here, st, is the very file the
// source saw, on a filesystem both hosts share, though the tree may have
// written it since: the same inode number on the same type of filesystem,
// at least as large as it was, and its first bytes unchanged. Such a file
// needs no copy, and its size is judged at the freeze: the restore sees the
// size the dump recorded, because it is the same file.
func SameFile(ff *pb.FileFact, st os.FileInfo) bool {
	if !ff.Written || ff.Inode == 0 || ff.HeadSha256 == "" || inodeOf(st) != ff.Inode || fsMagic(ff.Path) != ff.FsType {
		return false
	}
	if uint64(st.Size()) < ff.Size {
		return false // shrunk: not an append
	}
	sum, err := headSum(ff.Path, ff.HeadLen)
	return err == nil && sum == ff.HeadSha256
}
