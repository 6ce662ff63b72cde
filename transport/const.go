package transport

import "time"

// Wire constants. Changing any of them changes the protocol: they are
// pinned by TestWireConstants and described in docs/protocol.md.
const (
	// ProtocolVersion is sent in Hello, Welcome, StatusRequest, StatusReport
	// and Resolve; both sides must agree. 2: StatusRequest/StatusReport,
	// Resolve/Resolved, Failure for malformed frames. 3: pre-copy rounds
	// (Round, RoundDone, EndRounds, RoundsEnded; round streams). 4: SourceFacts.held
	// (locks, FIFOs and pty masters, judged by the destination), restore_pids,
	// pid_ns. 5, 6: carried files, moved addresses, post-copy. 7: post-copy
	// after pre-copy rounds (HeldPages, AllPages.held).
	ProtocolVersion = 7

	// MaxFrameSize bounds one control-stream message.
	MaxFrameSize = 4 << 20

	// Accepted is the byte the server sends right after the TLS handshake:
	// the client knows it was accepted (a refused client gets the TLS
	// alert on the same read instead).
	Accepted byte = 'A'

	// Stream kinds: the first byte a stream's opener writes.
	KindControl byte = 'C'
	KindPages   byte = 'P'
	KindImages  byte = 'I'
	KindRound   byte = 'R' // one pre-copy round's pages
	KindFiles   byte = 'F' // the files carried after the dump
	KindLazy    byte = 'L' // post-copy: page requests (destination to source) and their answers

	// MaxCarriedHeader bounds one CarriedFile header on a files stream.
	MaxCarriedHeader = 64 << 10

	// MaxImageNameLen bounds an image file name on the images stream.
	MaxImageNameLen = 255
	// MaxImageFileSize bounds one image file on the images stream (the
	// pages do not travel there).
	MaxImageFileSize = 256 << 20
	// MaxImagesTotal bounds all image files of one migration.
	MaxImagesTotal = 1 << 30

	// TLSServerName is the name the client verifies in the server's
	// certificate unless told otherwise: `phaul certs` puts it in every
	// server certificate, so that any host can serve under a private CA.
	TLSServerName = "phaul-service"
)

// Timeouts of the connection itself (the migration's steps have their own).
const (
	handshakeTimeout = 15 * time.Second
	keepAlive        = 5 * time.Second
	writeTimeout     = 15 * time.Second
)
