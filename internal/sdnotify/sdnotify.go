// Package sdnotify tells systemd how a Type=notify service is doing
// (sd_notify(3)): READY=1 once it serves, STATUS= lines, STOPPING=1 when it
// shuts down. It writes datagrams to the socket systemd names in
// $NOTIFY_SOCKET; without it, every call does nothing.
package sdnotify

import (
	"fmt"
	"net"
	"os"
	"strings"
)

// The states of sd_notify(3) phaul-service sends.
const (
	Ready     = "READY=1"
	Stopping  = "STOPPING=1"
	Reloading = "RELOADING=1"
)

// Notifier sends to one notify socket.
type Notifier struct {
	addr *net.UnixAddr
}

// FromEnv returns a Notifier for $NOTIFY_SOCKET, or nil when systemd (or a
// test) did not set it; a nil Notifier ignores every Send.
func FromEnv() *Notifier {
	path := os.Getenv("NOTIFY_SOCKET")
	if path == "" {
		return nil
	}
	if strings.HasPrefix(path, "@") {
		// An abstract socket: Go spells it with a leading NUL.
		path = "\x00" + path[1:]
	}
	return &Notifier{addr: &net.UnixAddr{Name: path, Net: "unixgram"}}
}

// Send sends one message of newline-separated assignments
// ("READY=1\nSTATUS=listening").
func (n *Notifier) Send(state ...string) error {
	if n == nil {
		return nil
	}
	c, err := net.DialUnix("unixgram", nil, n.addr)
	if err != nil {
		return fmt.Errorf("sd_notify: %w", err)
	}
	defer c.Close()
	if _, err := c.Write([]byte(strings.Join(state, "\n"))); err != nil {
		return fmt.Errorf("sd_notify: %w", err)
	}
	return nil
}

// Status formats a STATUS= assignment.
func Status(format string, args ...any) string {
	return "STATUS=" + strings.ReplaceAll(fmt.Sprintf(format, args...), "\n", " ")
}
