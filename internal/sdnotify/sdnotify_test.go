package sdnotify

import (
	"net"
	"path/filepath"
	"testing"
)

func TestSend(t *testing.T) {
	for _, abstract := range []bool{false, true} {
		path := filepath.Join(t.TempDir(), "notify")
		env := path
		if abstract {
			path = "\x00phaul-test-" + filepath.Base(t.TempDir())
			env = "@" + path[1:]
		}
		ln, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		t.Setenv("NOTIFY_SOCKET", env)
		n := FromEnv()
		if err := n.Send(Ready, Status("listening on %s\nnow", ":7070")); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 1024)
		k, err := ln.Read(buf)
		if err != nil {
			t.Fatal(err)
		}
		if got := string(buf[:k]); got != "READY=1\nSTATUS=listening on :7070 now" {
			t.Errorf("abstract=%v: got %q", abstract, got)
		}
	}
	t.Setenv("NOTIFY_SOCKET", "")
	if n := FromEnv(); n != nil || n.Send(Ready) != nil {
		t.Error("without NOTIFY_SOCKET, Send must do nothing")
	}
}
