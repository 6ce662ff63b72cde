package netmove

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"

	"golang.org/x/sys/unix"
)

// Announce tells the address's neighbours that it is now at this
// interface's hardware address: a gratuitous ARP (as a request and as a
// reply, which different hosts heed) for IPv4, an unsolicited neighbour
// advertisement with the override flag for IPv6. Neighbours that had
// the address cached at the other host send to this one from then on.
func Announce(a Assigned) error {
	ifi, err := net.InterfaceByName(a.Link)
	if err != nil {
		return fmt.Errorf("announce %s: %w", a, err)
	}
	if len(ifi.HardwareAddr) != 6 {
		return nil // no neighbours to tell (loopback, a tunnel)
	}
	if a.Prefix.Addr().Is4() {
		err = garp(ifi, a.Prefix.Addr())
	} else {
		err = advertise(ifi, a.Prefix.Addr())
	}
	if err != nil {
		return fmt.Errorf("announce %s: %w", a, err)
	}
	return nil
}

// arpPacket is an Ethernet/IPv4 ARP packet (RFC 826) in which the sender
// and the target protocol address are both ip: a gratuitous ARP.
func arpPacket(op uint16, mac net.HardwareAddr, ip netip.Addr, target net.HardwareAddr) []byte {
	b := make([]byte, 0, 28)
	b = binary.BigEndian.AppendUint16(b, 1)      // Ethernet
	b = binary.BigEndian.AppendUint16(b, 0x0800) // IPv4
	b = append(b, 6, 4)
	b = binary.BigEndian.AppendUint16(b, op)
	b = append(b, mac...)
	b = append(b, ip.AsSlice()...)
	b = append(b, target...)
	return append(b, ip.AsSlice()...)
}

func garp(ifi *net.Interface, ip netip.Addr) error {
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ARP)))
	if err != nil {
		return fmt.Errorf("packet socket: %w", err)
	}
	defer unix.Close(fd)
	to := &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ARP), Ifindex: ifi.Index, Halen: 6}
	copy(to.Addr[:], []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	broadcast := net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
	for _, p := range [][]byte{
		arpPacket(1, ifi.HardwareAddr, ip, make(net.HardwareAddr, 6)),
		arpPacket(2, ifi.HardwareAddr, ip, broadcast),
	} {
		if err := unix.Sendto(fd, p, 0, to); err != nil {
			return fmt.Errorf("gratuitous arp: %w", err)
		}
	}
	return nil
}

// naPacket is an unsolicited neighbour advertisement (RFC 4861 4.4) for
// target at mac, with the override flag; the kernel fills the checksum.
func naPacket(mac net.HardwareAddr, target netip.Addr) []byte {
	b := []byte{136, 0, 0, 0, 0x20, 0, 0, 0}
	b = append(b, target.AsSlice()...)
	b = append(b, 2, 1) // target link-layer address, 8 bytes
	return append(b, mac...)
}

func advertise(ifi *net.Interface, ip netip.Addr) error {
	fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_ICMPV6)
	if err != nil {
		return fmt.Errorf("icmpv6 socket: %w", err)
	}
	defer unix.Close(fd)
	// Neighbours accept only what no router forwarded (hop limit 255).
	if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_MULTICAST_HOPS, 255); err != nil {
		return err
	}
	if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_MULTICAST_IF, ifi.Index); err != nil {
		return err
	}
	if err := unix.Bind(fd, &unix.SockaddrInet6{Addr: ip.As16()}); err != nil {
		return fmt.Errorf("bind %s: %w", ip, err)
	}
	allNodes := netip.MustParseAddr("ff02::1")
	if err := unix.Sendto(fd, naPacket(ifi.HardwareAddr, ip), 0, &unix.SockaddrInet6{Addr: allNodes.As16(), ZoneId: uint32(ifi.Index)}); err != nil {
		return fmt.Errorf("neighbour advertisement: %w", err)
	}
	return nil
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }
