package precheck

import (
	"bufio"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"

	"github.com/phaul/phaul/internal/pb"
)

// tcpStates are the states of /proc/net/tcp.
var tcpStates = map[string]string{
	"01": "ESTABLISHED", "02": "SYN_SENT", "03": "SYN_RECV", "04": "FIN_WAIT1", "05": "FIN_WAIT2",
	"06": "TIME_WAIT", "07": "CLOSE", "08": "CLOSE_WAIT", "09": "LAST_ACK", "0A": "LISTEN", "0B": "CLOSING",
}

// socketsOf returns the sockets among inodes, read from the network
// namespace of pid.
func socketsOf(pid int, inodes map[uint64]bool) []*pb.SocketFact {
	var out []*pb.SocketFact
	for _, t := range []struct{ file, family, proto string }{
		{"tcp", "inet", "tcp"}, {"tcp6", "inet6", "tcp"}, {"udp", "inet", "udp"}, {"udp6", "inet6", "udp"},
	} {
		for _, s := range parseInet(fmt.Sprintf("/proc/%d/net/%s", pid, t.file), t.family, t.proto, inodes) {
			out = append(out, s)
		}
	}
	for _, t := range []struct{ file, family string }{{"unix", "unix"}, {"packet", "packet"}, {"netlink", "netlink"}} {
		if n := countInodes(fmt.Sprintf("/proc/%d/net/%s", pid, t.file), inodes); n > 0 {
			out = append(out, &pb.SocketFact{Family: t.family})
		}
	}
	return out
}

// ParseInetTable parses a /proc/net/{tcp,udp}[6] table, keeping the
// sockets whose inode is in inodes (all if inodes is nil).
func ParseInetTable(data, family, proto string, inodes map[uint64]bool) []*pb.SocketFact {
	var out []*pb.SocketFact
	sc := bufio.NewScanner(strings.NewReader(data))
	sc.Scan() // header
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 10 {
			continue
		}
		ino, err := strconv.ParseUint(f[9], 10, 64)
		if err != nil || (inodes != nil && !inodes[ino]) {
			continue
		}
		la, lp, err1 := parseHexAddr(f[1])
		ra, rp, err2 := parseHexAddr(f[2])
		if err1 != nil || err2 != nil {
			continue
		}
		state := tcpStates[f[3]]
		if proto == "udp" {
			state = ""
			if rp == 0 {
				state = "BOUND"
			}
		}
		out = append(out, &pb.SocketFact{Family: family, Proto: proto, State: state,
			LocalAddr: la, LocalPort: uint32(lp), RemoteAddr: ra, RemotePort: uint32(rp)})
	}
	return out
}

func parseInet(path, family, proto string, inodes map[uint64]bool) []*pb.SocketFact {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	return ParseInetTable(string(data), family, proto, inodes)
}

// parseHexAddr decodes "0100007F:1F90" (little-endian words) to an address
// and a port.
func parseHexAddr(s string) (string, int, error) {
	a, p, ok := strings.Cut(s, ":")
	if !ok {
		return "", 0, fmt.Errorf("bad address %q", s)
	}
	raw, err := hex.DecodeString(a)
	if err != nil || (len(raw) != 4 && len(raw) != 16) {
		return "", 0, fmt.Errorf("bad address %q", s)
	}
	for i := 0; i < len(raw); i += 4 {
		raw[i], raw[i+1], raw[i+2], raw[i+3] = raw[i+3], raw[i+2], raw[i+1], raw[i]
	}
	port, err := strconv.ParseUint(p, 16, 16)
	if err != nil {
		return "", 0, fmt.Errorf("bad port %q", s)
	}
	return net.IP(raw).String(), int(port), nil
}

// countInodes counts the sockets of a table (inode in the last column but
// one or last) that belong to inodes.
func countInodes(path string, inodes map[uint64]bool) int {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	n := 0
	lines := strings.Split(string(data), "\n")
	for _, line := range lines[1:] {
		for _, field := range strings.Fields(line) {
			if v, err := strconv.ParseUint(field, 10, 64); err == nil && inodes[v] && v > 1000 {
				n++
				break
			}
		}
	}
	return n
}

// protoName is the name /proc/net/protocols gives a socket's protocol.
func protoName(s *pb.SocketFact) string {
	switch {
	case s.Family == "inet" && s.Proto == "tcp":
		return "TCP"
	case s.Family == "inet6" && s.Proto == "tcp":
		return "TCPv6"
	case s.Family == "inet" && s.Proto == "udp":
		return "UDP"
	case s.Family == "inet6" && s.Proto == "udp":
		return "UDPv6"
	case s.Family == "unix":
		return "UNIX"
	case s.Family == "packet":
		return "PACKET"
	case s.Family == "netlink":
		return "NETLINK"
	}
	return ""
}

// CPUFlags returns the flags of the first CPU in a cpuinfo file.
func CPUFlags(path string) []string {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	for _, line := range strings.Split(string(data), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "flags" {
			return strings.Fields(v)
		}
	}
	return nil
}

// isWildcard reports whether a socket's local address is any address or
// loopback: such a socket can be restored on any host.
func isWildcard(addr string) bool {
	ip := net.ParseIP(addr)
	return ip == nil || ip.IsUnspecified() || ip.IsLoopback()
}
