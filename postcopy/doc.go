// Package postcopy is phaul's post-copy page pipeline: the destination
// restores the tree without its memory and lets it run at once; the pages
// follow, each fetched on the task's first touch of it or pushed in the
// background, through userfaultfd (CRIU's lazy pages).
//
// The roles:
//
//   - On the source, a Snapshot is a complete dump of the tree (CRIU's
//     images, pages included) taken while the tree is frozen; the tree
//     itself stays stopped until every page has arrived. Serve answers the
//     destination's page requests from the snapshot. It is phaul's own
//     page server, not CRIU's: CRIU's lazy page server needs a 4 MiB pipe
//     (its tee of every answer), which a root without CAP_SYS_RESOURCE
//     cannot have above fs.pipe-max-size (Limits), and it resumes the
//     tree on any failure, while the destination's copy may still run.
//   - On the destination, CRIU's lazy-pages daemon (criu.StartLazyPages)
//     takes the userfaultfds of a restore with lazy_pages and asks for
//     each missing page over a socket phaul relays to the source.
//
// SelfTest runs the whole chain on one host with a process of its own:
// what `phaul check-host` reports as lazy pages working.
package postcopy
