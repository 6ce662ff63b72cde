package precheck

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"

	"github.com/phaul/phaul/internal/pb"
)

// CarryOptions are the migration's policy for the files of the tree that
// the destination lacks or has in another version (--files, --carry-limit,
// --replace-files): with Mode "carry" the source sends them after the dump,
// while the tree is frozen and its files still, and the destination puts
// them in place before the restore (and back as they were if the migration
// fails).
type CarryOptions struct {
	Mode         string   // "carry" (the default) or "check" (nothing is carried: the files check fails instead)
	ReplaceAll   bool     // --replace-files: replace a file the destination has in another version, unless it is a system file
	ReplacePaths []string // --replace-files=PATH,...: replace (or create) these, system files included
	Limit        uint64   // --carry-limit: the bytes carried at most; 0 for no bound
}

// Carrying says whether files are carried at all.
func (c CarryOptions) Carrying() bool { return c.Mode == "" || c.Mode == "carry" }

// systemDirs hold a host's own system: its programs, libraries and
// configuration, which a migration never writes unless told by name.
var systemDirs = []string{"/usr/", "/lib/", "/lib32/", "/lib64/", "/libx32/", "/bin/", "/sbin/", "/etc/", "/boot/"}

// SystemFile says whether path is a file of the host's system (systemDirs).
func SystemFile(path string) bool {
	for _, d := range systemDirs {
		if strings.HasPrefix(path, d) {
			return true
		}
	}
	return false
}

// MayWrite says why the policy does not let the destination write path
// ("" when it does): create it where it is missing, or, with replace,
// replace the other version it has. Each answer names the remedy.
func (c CarryOptions) MayWrite(path string, replace bool) string {
	switch {
	case !c.Carrying():
		return ""
	case slices.Contains(c.ReplacePaths, path):
		return ""
	case SystemFile(path):
		return "; a file of the destination's system (under /usr, /lib, /etc, /bin, /sbin, /boot) is carried only when named: --replace-files=" + path
	case !replace || c.ReplaceAll:
		return ""
	}
	return "; --replace-files would replace it with the source's (put back if the migration fails)"
}

// plan says how ff, which this host lacks (st nil) or has in another
// version (st), is carried, or nil and why it is not (the remedy, to
// append to the files check's item).
func (c CarryOptions) plan(ff *pb.FileFact, st os.FileInfo) (*pb.Carry, string) {
	if !c.Carrying() {
		return nil, "; --files=carry would carry it after the dump (or share it between the hosts)"
	}
	if st == nil {
		if why := c.MayWrite(ff.Path, false); why != "" {
			return nil, why
		}
		return &pb.Carry{Path: ff.Path, How: CarryWhole, Size: ff.Size}, ""
	}
	if !st.Mode().IsRegular() {
		return nil, "; it is not a regular file here"
	}
	if ff.Written && uint64(st.Size()) < ff.Size {
		// Perhaps an older copy of a log: the source tells whether it
		// is a prefix of its own (SettleCarry).
		if why := c.MayWrite(ff.Path, false); why != "" {
			return nil, why
		}
		sum, err := Hashes.Sum(ff.Path)
		if err != nil {
			return nil, "; unreadable here: " + err.Error()
		}
		return &pb.Carry{Path: ff.Path, How: CarryTail, Size: ff.Size, DestSize: uint64(st.Size()), DestSha256: sum}, ""
	}
	if why := c.MayWrite(ff.Path, true); why != "" {
		return nil, why
	}
	return &pb.Carry{Path: ff.Path, How: CarryReplace, Size: ff.Size, DestSize: uint64(st.Size())}, ""
}

// How a file is carried (Carry.how).
const (
	CarryWhole   = "whole"   // missing on the destination
	CarryTail    = "tail"    // the destination's copy is a prefix: only the rest crosses
	CarryReplace = "replace" // the destination's other version is put aside and back if the migration fails
)

// CarryBytes is what crossing c takes, at the source's size.
func CarryBytes(c *pb.Carry) uint64 {
	if c.How == CarryTail {
		return c.Size - min(c.DestSize, c.Size)
	}
	return c.Size
}

// carryItem describes c for the files check.
func carryItem(c *pb.Carry) string {
	switch c.How {
	case CarryTail:
		return fmt.Sprintf("%s: carried after the dump, the %d bytes past the %d here", c.Path, CarryBytes(c), c.DestSize)
	case CarryReplace:
		return fmt.Sprintf("%s: carried after the dump (%d bytes), replacing the other version here (%d bytes), which is put back if the migration fails", c.Path, c.Size, c.DestSize)
	}
	return fmt.Sprintf("%s: missing here, carried after the dump (%d bytes)", c.Path, c.Size)
}

// IsPrefix says whether the first n bytes of the file at path hash to
// sum (sha256, hex): the destination's shorter copy of a file the tree
// appends to is then a prefix of it, and only the rest must cross.
func IsPrefix(path string, n uint64, sum string) bool {
	f, err := os.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	h := sha256.New()
	if m, err := io.CopyN(h, f, int64(n)); err != nil || uint64(m) != n {
		return false
	}
	return hex.EncodeToString(h.Sum(nil)) == sum
}

// SettleCarry decides, on the source, what the destination offered to take
// (the files verdict's carry, SettleWrittenMissing's included): a tail
// whose destination copy is not the start of the source's file becomes a
// replace where the policy allows it, and fails the check where not; all
// of it must stay within c.Limit. It returns the files to send after the
// dump, sized as the source sees them now (nil if the check failed).
func SettleCarry(vs []*pb.Verdict, c CarryOptions) []*pb.Carry {
	var out []*pb.Carry
	for _, v := range vs {
		if v.Check != "files" || len(v.Carry) == 0 || v.Result == pb.Verdict_FAIL {
			continue // nothing is carried for a migration that will not go ahead
		}
		var bad []string
		var total uint64
		offered := map[string]bool{}
		for _, cf := range v.Carry {
			offered[carryItem(cf)] = true
		}
		for _, cf := range v.Carry {
			st, err := os.Stat(cf.Path)
			if err != nil {
				bad = append(bad, fmt.Sprintf("%s: gone on the source since the checks began", cf.Path))
				continue
			}
			cf.Size = uint64(st.Size())
			if cf.How == CarryTail && !IsPrefix(cf.Path, cf.DestSize, cf.DestSha256) {
				if why := c.MayWrite(cf.Path, true); why != "" {
					bad = append(bad, fmt.Sprintf("%s: the destination's copy (%d bytes) is not the start of the source's (%d bytes)%s", cf.Path, cf.DestSize, cf.Size, why))
					continue
				}
				cf.How = CarryReplace
			}
			total += CarryBytes(cf)
			out = append(out, cf)
		}
		if c.Limit > 0 && total > c.Limit {
			bad = append(bad, fmt.Sprintf("the %d files to carry come to %d bytes, over --carry-limit %d: raise it, or put the files on the destination first", len(out), total, c.Limit))
		}
		if len(bad) > 0 {
			if v.Result != pb.Verdict_FAIL {
				v.Items = nil
			}
			v.Items = append(v.Items, bad...)
			v.Result, v.Transient = pb.Verdict_FAIL, false
			v.Detail = fmt.Sprintf("%d files cannot be carried as the policy stands", len(bad))
			return nil
		}
		items := v.Items
		v.Items = nil
		for _, cf := range out {
			v.Items = append(v.Items, carryItem(cf))
		}
		for _, it := range items {
			if !offered[it] {
				v.Items = append(v.Items, it)
			}
		}
	}
	return out
}
