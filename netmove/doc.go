// Package netmove moves IP addresses with a migrated tree, so that its
// clients find it again and its TCP connections (carried by CRIU's TCP
// repair) go on from the destination.
//
// An address leaves the source after CRIU's dump, while CRIU's network
// lock keeps the tree's connections from answering; the destination puts
// a Guard up (nftables rules that drop TCP to and from the address, so
// that the host neither resets a connection whose socket is not restored
// yet nor acknowledges anything the source might still have to take
// back), adds the address, announces it (gratuitous ARP, unsolicited
// neighbour advertisement), restores, and lowers the guard only at the
// commit. Any failure before the commit takes the address off the
// destination, guard still up, and puts it back on the source, announced
// there, before the source's tree resumes.
//
// Everything here acts on the network namespace of the calling thread.
package netmove
