// Package precopy is phaul's page pipeline: it copies a tree's memory to
// the destination while the tree runs, so that the dump made once the tree
// is frozen sends only the pages that changed since.
//
// It needs no dirty tracking from the kernel (no soft-dirty): it compares
// content. A round reads every page CRIU's dump would send (/proc/PID/maps,
// /proc/PID/pagemap, process_vm_readv; the tasks' own memory, and shared
// memory by object and offset as CRIU dumps it), hashes each with a keyed 128-bit
// hash (HighwayHash, with a random key per migration), and writes CRIU's
// own page-server protocol to a CRIU page server on the destination: a
// page whose hash equals the one of the last bytes sent for that task and
// address becomes a PE_PARENT entry (no bytes), every other page is sent.
// Each round's page server writes into a directory of its own whose
// "parent" link names the round before, so the rounds form CRIU's chain
// of parent images; the final dump's page server has the last round as its
// parent, and CRIU's restore reads unchanged pages from the chain itself.
//
// The final dump is CRIU's: the Encoder sits in the source's page pump
// (Forward) and rewrites CRIU's stream the same way, hashing the bytes
// CRIU sends while the tree is frozen. A page is referenced only when the
// bytes it holds at the freeze hash to what the destination holds, so a
// write the rounds missed (or a torn read) only means the page is sent in
// full.
package precopy
