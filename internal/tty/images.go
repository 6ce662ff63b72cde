package tty

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/checkpoint-restore/go-criu/v7/crit/images/pstree"
	ttyimg "github.com/checkpoint-restore/go-criu/v7/crit/images/tty"
	"google.golang.org/protobuf/proto"

	"github.com/phaul/phaul/internal/criuimg"
)

// DetachSessions rewrites the images in dir so that CRIU can restore the
// external terminals of a tree that was the job of a shell: such a
// terminal was the controlling terminal of a session whose leader is not
// in the tree (the shell's), and CRIU refuses to restore it ("No task
// found with sid"). Its session and process group are cleared: the
// restored tree uses the new terminal as an ordinary one, not as its
// controlling terminal. It returns how many terminals it changed.
func DetachSessions(dir string) (int, error) {
	led := map[uint32]bool{} // sessions whose leader is in the tree
	img, err := criuimg.Read(filepath.Join(dir, "pstree.img"), "PSTREE", &pstree.PstreeEntry{})
	if err != nil {
		return 0, err
	}
	for _, e := range img.Entries {
		p := e.Message.(*pstree.PstreeEntry)
		if p.GetPid() == p.GetSid() {
			led[p.GetSid()] = true
		}
	}
	path := filepath.Join(dir, "tty-info.img")
	img, err = criuimg.Read(path, "TTY_INFO", &ttyimg.TtyInfoEntry{})
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil // no terminals at all
	} else if err != nil {
		return 0, err
	}
	changed := 0
	for _, e := range img.Entries {
		t := e.Message.(*ttyimg.TtyInfoEntry)
		if t.GetType() != ttyimg.TtyType_EXT_TTY || t.GetSid() == 0 || led[t.GetSid()] {
			continue
		}
		t.Sid, t.Pgrp = proto.Uint32(0), proto.Uint32(0)
		changed++
	}
	if changed == 0 {
		return 0, nil
	}
	if err := criuimg.Write(path, img); err != nil {
		return 0, fmt.Errorf("rewrite %s: %w", path, err)
	}
	return changed, nil
}
