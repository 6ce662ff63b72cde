package precheck

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"strings"
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

func devInode(st os.FileInfo) (dev, ino uint64) {
	if s, ok := st.Sys().(*syscall.Stat_t); ok {
		return s.Dev, s.Ino
	}
	return 0, 0
}

// fsMagic is the type of the filesystem holding path (statfs f_type).
func fsMagic(path string) int64 {
	var s unix.Statfs_t
	if unix.Statfs(path, &s) != nil {
		return 0
	}
	return int64(s.Type)
}

// sharedFS are the types of filesystems (statfs f_type) that hosts share
// over a network or a shared disk, on which one file is seen from several
// kernels with the same inode number.
var sharedFS = map[int64]string{
	unix.NFS_SUPER_MAGIC: "nfs", unix.SMB2_SUPER_MAGIC: "smb", unix.CIFS_SUPER_MAGIC: "cifs",
	unix.CEPH_SUPER_MAGIC: "ceph", unix.V9FS_MAGIC: "9p", unix.FUSE_SUPER_MAGIC: "fuse",
	0x01161970: "gfs2", 0x7461636f: "ocfs2", 0x0bd00bd0: "lustre", unix.AFS_FS_MAGIC: "afs",
}

// BootID identifies the running kernel (/proc/sys/kernel/random/boot_id):
// two "hosts" with the same one share one kernel, and so every filesystem.
func BootID() string {
	data, _ := os.ReadFile("/proc/sys/kernel/random/boot_id")
	return strings.TrimSpace(string(data))
}

// SameFile says whether the file at ff.Path here, st, is the very file the
// source saw, though the tree may have written it since (sameObject), at
// least as large as the source saw it and with its first bytes unchanged.
// Such a file needs no copy, and its size is judged at the freeze: the
// restore sees the size the dump recorded, because it is the same file.
func SameFile(ff *pb.FileFact, st os.FileInfo, sourceBoot string) bool {
	if !ff.Written || ff.Inode == 0 || ff.HeadSha256 == "" || uint64(st.Size()) < ff.Size {
		return false
	}
	if sameObject(ff.Dev, ff.Inode, ff.FsType, st, ff.Path, sourceBoot) == "" {
		return false
	}
	sum, err := headSum(ff.Path, ff.HeadLen)
	return err == nil && sum == ff.HeadSha256
}

// sameObject says how this host sees, at path (st), the very file the
// source saw with dev, ino and fsType, or "" if it does not: on the same
// kernel (sourceBoot is this host's boot ID: two network namespaces, two
// containers), the same device and inode; across kernels, the same inode
// on a network or cluster filesystem of the same type on both sides (two
// hosts made from one disk image have the same inode numbers on their
// local disks).
func sameObject(dev, ino uint64, fsType int64, st os.FileInfo, path, sourceBoot string) string {
	sdev, sino := devInode(st)
	switch {
	case ino == 0 || sino != ino:
		return ""
	case sourceBoot != "" && sourceBoot == BootID():
		if sdev != dev {
			return ""
		}
		return "one kernel: the same device and inode"
	}
	if fs, ok := sharedFS[fsType]; ok && fsMagic(path) == fsType {
		return "on " + fs + ", shared with the source"
	}
	return ""
}
