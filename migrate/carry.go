package migrate

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/phaul/phaul/internal/pb"
	"github.com/phaul/phaul/precheck"
	"github.com/phaul/phaul/transport"
)

// Files carried (--files=carry): the destination offered in its files
// verdict to take the files of the tree it lacks or has in another version;
// the source's Prepare names those it will send, and after the dump their
// bytes arrive on the files stream. The carrier puts each in place, with
// the source's mode, owner and times, before the restore, and writes down
// first (carried.json in the migration's directory) what it takes to undo
// it: a file placed is removed, a tail is cut off again, a file replaced
// is put back from the hard link that kept it, a directory made is
// removed. Undone on any failure before the commit (also by a restarted
// service, or `phaul resolve` aborting a copy in doubt); after the commit
// only the kept versions are removed.

// carryJournal is the name of a migration's journal of carried files.
const carryJournal = "carried.json"

// carryStep is one thing done on the destination's filesystem, and how to
// undo it.
type carryStep struct {
	Do     string `json:"do"`               // mkdir, place, extend, replace
	Path   string `json:"path"`             // the file or directory
	Temp   string `json:"temp,omitempty"`   // place, replace: the file written before the rename
	Backup string `json:"backup,omitempty"` // replace: a hard link to the other version
	// place: the file written (device, inode), known once it is, before
	// it is renamed into place: only that file is removed.
	Dev uint64 `json:"dev,omitempty"`
	Ino uint64 `json:"ino,omitempty"`
	// extend: the file as it was.
	Size  int64  `json:"size,omitempty"`
	Mode  uint32 `json:"mode,omitempty"`
	Uid   int    `json:"uid,omitempty"`
	Gid   int    `json:"gid,omitempty"`
	Atime int64  `json:"atime,omitempty"`
	Mtime int64  `json:"mtime,omitempty"`
}

// carrier places the files of one migration.
type carrier struct {
	dir     string                 // the migration's directory (the journal)
	id      string                 // the migration's ID (names of temporary files)
	offered map[string]*pb.Carry   // what this host offered (files verdict)
	replace func(path string) bool // whether a tail may become a replace (the policy)
	want    map[string]*pb.Carry   // what the source will send (Prepare.carry)
	steps   []carryStep
	log     *slog.Logger
	files   int
	bytes   int64
}

// offer records what the files verdict of the checks offered to take:
// its carry, and the files the tree writes that are missing here (the
// source decides whether the tree keeps them, SettleWrittenMissing).
func offered(vs []*pb.Verdict, mayCreate func(string) bool) map[string]*pb.Carry {
	out := map[string]*pb.Carry{}
	for _, v := range vs {
		if v.Check != "files" {
			continue
		}
		for _, c := range v.Carry {
			out[c.Path] = c
		}
		for _, p := range v.WrittenMissing {
			if mayCreate(p) {
				out[p] = &pb.Carry{Path: p, How: precheck.CarryWhole}
			}
		}
	}
	return out
}

// accept checks the source's list against what was offered: the same
// files, carried the same way (a tail may become a replace where the
// policy allows), with the sizes this host gave.
func (c *carrier) accept(list []*pb.Carry) error {
	c.want = map[string]*pb.Carry{}
	for _, w := range list {
		o := c.offered[w.Path]
		switch {
		case o == nil:
			return fmt.Errorf("%w: the source would carry %s, which this host did not offer to take", ErrProtocol, w.Path)
		case c.want[w.Path] != nil:
			return fmt.Errorf("%w: %s is carried twice", ErrProtocol, w.Path)
		case w.How == o.How, w.How == precheck.CarryReplace && o.How == precheck.CarryTail && c.replace(w.Path):
		default:
			return fmt.Errorf("%w: the source would carry %s as %s, offered as %s", ErrProtocol, w.Path, w.How, o.How)
		}
		if w.How != precheck.CarryWhole && w.DestSize != o.DestSize {
			return fmt.Errorf("%w: %s: the source says it is %d bytes here, this host said %d", ErrProtocol, w.Path, w.DestSize, o.DestSize)
		}
		c.want[w.Path] = w
	}
	return nil
}

// place puts one file from the files stream in place (transport.ReadFiles
// calls it for each).
func (c *carrier) place(h *pb.CarriedFile, body io.Reader) error {
	w := c.want[h.Path]
	switch {
	case w == nil:
		return fmt.Errorf("%w: the files stream carries %s, which the source did not announce", ErrProtocol, h.Path)
	case w.How != h.How:
		return fmt.Errorf("%w: %s comes as %s, announced as %s", ErrProtocol, h.Path, h.How, w.How)
	case h.How == precheck.CarryTail && h.Offset != w.DestSize:
		return fmt.Errorf("%w: the tail of %s starts at %d, not at the %d bytes here", ErrProtocol, h.Path, h.Offset, w.DestSize)
	}
	delete(c.want, h.Path) // once
	var err error
	if h.How == precheck.CarryTail {
		err = c.extend(h, body)
	} else {
		err = c.write(h, body)
	}
	if err != nil {
		return fmt.Errorf("carry %s: %w", h.Path, err)
	}
	c.files++
	c.bytes += int64(h.Length)
	c.log.Info("file carried", "path", h.Path, "how", h.How, "bytes", h.Length)
	return nil
}

// missing says what the source announced and did not send.
func (c *carrier) missing() error {
	if len(c.want) == 0 {
		return nil
	}
	var paths []string
	for p := range c.want {
		paths = append(paths, p)
	}
	slices.Sort(paths)
	return fmt.Errorf("the files stream ended without %s", strings.Join(paths, ", "))
}

// do records step in the journal, on disk, before it is done.
func (c *carrier) do(step carryStep) error {
	c.steps = append(c.steps, step)
	return c.record()
}

// record writes the journal.
func (c *carrier) record() error {
	data, _ := json.Marshal(c.steps)
	if err := writeDurable(filepath.Join(c.dir, carryJournal), data); err != nil {
		return fmt.Errorf("record the files carried: %w", err)
	}
	return nil
}

// write places a whole file at h.Path (missing here, or replacing the
// other version, kept as a hard link beside it until the commit): written
// under a temporary name in the same directory, then renamed.
func (c *carrier) write(h *pb.CarriedFile, body io.Reader) error {
	dir, base := filepath.Split(h.Path)
	if err := c.mkdirs(filepath.Clean(dir)); err != nil {
		return err
	}
	temp := filepath.Join(dir, fmt.Sprintf(".%s.phaul-%s", base, c.id))
	step := carryStep{Do: "place", Path: h.Path, Temp: temp}
	if h.How == precheck.CarryReplace {
		step.Do, step.Backup = "replace", filepath.Join(dir, fmt.Sprintf(".%s.phaul-%s.orig", base, c.id))
	} else if _, err := os.Lstat(h.Path); !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("it was missing here at the checks, and is here now")
	}
	if err := c.do(step); err != nil {
		return err
	}
	f, err := os.OpenFile(temp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	_, err = io.Copy(f, body)
	if err == nil {
		err = setMeta(f, h)
	}
	var st unix.Stat_t
	if err == nil {
		err = unix.Fstat(int(f.Fd()), &st)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	last := &c.steps[len(c.steps)-1]
	last.Dev, last.Ino = st.Dev, st.Ino
	if err := c.record(); err != nil {
		return err
	}
	if step.Do == "replace" {
		if err := os.Link(h.Path, step.Backup); err != nil {
			return fmt.Errorf("keep the version here: %w", err)
		}
		return os.Rename(temp, h.Path)
	}
	return unix.Renameat2(unix.AT_FDCWD, temp, unix.AT_FDCWD, h.Path, unix.RENAME_NOREPLACE)
}

// extend appends the tail of a file whose copy here is a prefix of the
// source's (checked by the source against this copy's sha256 at the
// checks; its size is checked again here).
func (c *carrier) extend(h *pb.CarriedFile, body io.Reader) error {
	f, err := os.OpenFile(h.Path, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return err
	}
	if uint64(st.Size) != h.Offset {
		return fmt.Errorf("it is %d bytes here now, %d at the checks: something here wrote it since", st.Size, h.Offset)
	}
	if err := c.do(carryStep{Do: "extend", Path: h.Path, Size: st.Size, Mode: st.Mode & 0o7777, Uid: int(st.Uid), Gid: int(st.Gid),
		Atime: unix.TimespecToNsec(st.Atim), Mtime: unix.TimespecToNsec(st.Mtim)}); err != nil {
		return err
	}
	if _, err := f.Seek(st.Size, io.SeekStart); err != nil {
		return err
	}
	if _, err := io.Copy(f, body); err != nil {
		return err
	}
	return setMeta(f, h)
}

// mkdirs makes dir and its missing parents, recording each.
func (c *carrier) mkdirs(dir string) error {
	if _, err := os.Stat(dir); err == nil || dir == "/" {
		return nil
	}
	if err := c.mkdirs(filepath.Dir(dir)); err != nil {
		return err
	}
	if err := c.do(carryStep{Do: "mkdir", Path: dir}); err != nil {
		return err
	}
	return os.Mkdir(dir, 0o755)
}

// setMeta gives f the source's mode, owner and times.
func setMeta(f *os.File, h *pb.CarriedFile) error {
	if err := f.Chown(int(h.Uid), int(h.Gid)); err != nil {
		return err
	}
	if err := f.Chmod(fs.FileMode(h.Mode&0o777) | modeBits(h.Mode)); err != nil {
		return err
	}
	ts := []unix.Timespec{unix.NsecToTimespec(h.AtimeNanos), unix.NsecToTimespec(h.MtimeNanos)}
	return unix.UtimesNanoAt(unix.AT_FDCWD, fmt.Sprintf("/proc/self/fd/%d", f.Fd()), ts, 0)
}

// modeBits turns the setuid, setgid and sticky bits of a Unix mode into
// Go's.
func modeBits(m uint32) fs.FileMode {
	var out fs.FileMode
	if m&syscall.S_ISUID != 0 {
		out |= fs.ModeSetuid
	}
	if m&syscall.S_ISGID != 0 {
		out |= fs.ModeSetgid
	}
	if m&syscall.S_ISVTX != 0 {
		out |= fs.ModeSticky
	}
	return out
}

// undoCarried undoes, last first, what the journal in dir says was done,
// and removes the journal: the destination's files are as they were. Each
// step may have been done in part (the service died in it): undoing one
// not done is harmless.
func undoCarried(dir string, log *slog.Logger) error {
	steps, err := readCarried(dir)
	if err != nil || len(steps) == 0 {
		return err
	}
	var errs []error
	for i := len(steps) - 1; i >= 0; i-- {
		if err := undoStep(steps[i]); err != nil {
			errs = append(errs, fmt.Errorf("%s %s: %w", steps[i].Do, steps[i].Path, err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("put the destination's files back: %w", err)
	}
	os.Remove(filepath.Join(dir, carryJournal))
	log.Info("put back the files carried", "steps", len(steps))
	return nil
}

func undoStep(s carryStep) error {
	gone := func(err error) error {
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		return err
	}
	switch s.Do {
	case "mkdir":
		return gone(os.Remove(s.Path))
	case "place":
		if err := gone(os.Remove(s.Temp)); err != nil {
			return err
		}
		// Only the file written here, if it was renamed into place.
		var st unix.Stat_t
		if s.Ino == 0 || unix.Lstat(s.Path, &st) != nil || st.Dev != s.Dev || st.Ino != s.Ino {
			return nil
		}
		return gone(os.Remove(s.Path))
	case "replace":
		os.Remove(s.Temp)
		if _, err := os.Lstat(s.Backup); err != nil {
			return nil // not replaced yet: the version here is in place
		}
		return os.Rename(s.Backup, s.Path)
	case "extend":
		if err := os.Truncate(s.Path, s.Size); err != nil {
			return gone(err)
		}
		os.Lchown(s.Path, s.Uid, s.Gid)
		os.Chmod(s.Path, fs.FileMode(s.Mode&0o777)|modeBits(s.Mode))
		return unix.UtimesNanoAt(unix.AT_FDCWD, s.Path, []unix.Timespec{unix.NsecToTimespec(s.Atime), unix.NsecToTimespec(s.Mtime)}, unix.AT_SYMLINK_NOFOLLOW)
	}
	return fmt.Errorf("unknown step %q", s.Do)
}

// commitCarried keeps what was carried: the versions replaced are removed,
// and the journal.
func commitCarried(dir string, log *slog.Logger) {
	steps, err := readCarried(dir)
	if err != nil {
		log.Warn("the journal of the files carried is unreadable; versions replaced may be left as .*.phaul-ID.orig", "err", err)
		return
	}
	for _, s := range steps {
		if s.Backup != "" {
			if err := os.Remove(s.Backup); err != nil && !errors.Is(err, fs.ErrNotExist) {
				log.Warn("cannot remove a version replaced", "path", s.Backup, "err", err)
			}
		}
	}
	os.Remove(filepath.Join(dir, carryJournal))
}

// readCarried reads a migration's journal (none: no steps).
func readCarried(dir string) ([]carryStep, error) {
	data, err := os.ReadFile(filepath.Join(dir, carryJournal))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	} else if err != nil {
		return nil, err
	}
	var steps []carryStep
	if err := json.Unmarshal(data, &steps); err != nil {
		return nil, fmt.Errorf("%s: %w", carryJournal, err)
	}
	return steps, nil
}

// carryOptions is the files policy of o.
func (o Options) carryOptions() precheck.CarryOptions {
	return precheck.CarryOptions{Mode: o.Files, ReplaceAll: o.ReplaceFiles, ReplacePaths: o.ReplacePaths, Limit: o.CarryLimit}
}

// sendCarried sends the files the destination is to take (m.carry) on a
// files stream, at post-dump: the tree is frozen, and its files as the
// dump recorded them. A tail is sent only if the destination's copy is
// still the start of the file.
func (m *source) sendCarried(ctx context.Context) error {
	if len(m.carry) == 0 {
		return nil
	}
	prog := carryProgress{files: len(m.carry)}
	for _, c := range m.carry {
		prog.bytes += int64(precheck.CarryBytes(c))
	}
	m.o.Progress.setCarry(prog)
	st, err := m.sess.Open(ctx, transport.KindFiles)
	if err != nil {
		return err
	}
	defer st.Close()
	var counts transport.Counts
	w, err := transport.NewFileWriter(st, &counts)
	if err != nil {
		return err
	}
	rep := &m.r.Carried
	for _, c := range m.carry {
		n, err := sendFile(ctx, w, c)
		if err != nil {
			return fmt.Errorf("carry %s: %w", c.Path, err)
		}
		rep.Files++
		rep.Bytes += n
		rep.Paths = append(rep.Paths, c.Path)
		switch c.How {
		case precheck.CarryTail:
			rep.Tails = append(rep.Tails, c.Path)
		case precheck.CarryReplace:
			rep.Replaced = append(rep.Replaced, c.Path)
		}
		prog.sent, prog.copied = prog.sent+1, prog.copied+n
		m.o.Progress.setCarry(prog)
	}
	if err := w.Close(); err != nil {
		return err
	}
	m.log.Info("files carried", "files", rep.Files, "bytes", rep.Bytes, "wire", counts.Wire.Load())
	return nil
}

// sendFile sends one file as c says, and returns the bytes of content sent.
func sendFile(ctx context.Context, w *transport.FileWriter, c *pb.Carry) (int64, error) {
	f, err := os.Open(c.Path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return 0, err
	}
	h := &pb.CarriedFile{Path: c.Path, How: c.How, Length: uint64(st.Size), Mode: st.Mode & 0o7777, Uid: st.Uid, Gid: st.Gid,
		AtimeNanos: unix.TimespecToNsec(st.Atim), MtimeNanos: unix.TimespecToNsec(st.Mtim)}
	if c.How == precheck.CarryTail {
		if !precheck.IsPrefix(c.Path, c.DestSize, c.DestSha256) {
			return 0, fmt.Errorf("the destination's copy (%d bytes) is no longer the start of it: the tree rewrote it since the checks", c.DestSize)
		}
		h.Offset, h.Length = c.DestSize, uint64(st.Size)-c.DestSize
		if _, err := f.Seek(int64(c.DestSize), io.SeekStart); err != nil {
			return 0, err
		}
	}
	if err := w.Send(ctx, h, f); err != nil {
		return 0, err
	}
	return int64(h.Length), nil
}
