package migrate_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/yamux"
	"google.golang.org/protobuf/proto"

	"github.com/phaul/phaul/criu"
	"github.com/phaul/phaul/internal/pb"
	"github.com/phaul/phaul/internal/proc"
	"github.com/phaul/phaul/internal/testutil"
	"github.com/phaul/phaul/internal/twohosts"
	"github.com/phaul/phaul/transport"
)

// hostile is a client with valid certificates that speaks the protocol
// by hand, to send what phaul never would.
type hostile struct {
	t   *testing.T
	mux *yamux.Session
	ctl net.Conn
}

func dialHostile(t *testing.T, h *twohosts.Hosts, addr string) *hostile {
	t.Helper()
	conf, err := transport.ClientTLS(h.TLS, "")
	if err != nil {
		t.Fatal(err)
	}
	raw, err := h.DialFrom("a", addr)
	if err != nil {
		t.Fatal(err)
	}
	tc := tls.Client(raw, conf)
	var b [1]byte
	if _, err := io.ReadFull(tc, b[:]); err != nil || b[0] != transport.Accepted {
		t.Fatalf("not accepted: %v %q", err, b[0])
	}
	mux, err := yamux.Client(tc, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mux.Close() })
	c := &hostile{t: t, mux: mux}
	c.ctl = c.open(transport.KindControl)
	return c
}

func (c *hostile) open(kind byte) net.Conn {
	c.t.Helper()
	st, err := c.mux.OpenStream()
	if err != nil {
		c.t.Fatal(err)
	}
	if _, err := st.Write([]byte{kind}); err != nil {
		c.t.Fatal(err)
	}
	return st
}

func frame(data []byte) []byte {
	return append(binary.BigEndian.AppendUint32(nil, uint32(len(data))), data...)
}

func (c *hostile) send(m *pb.Envelope) {
	c.t.Helper()
	data, err := proto.Marshal(m)
	if err != nil {
		c.t.Fatal(err)
	}
	if _, err := c.ctl.Write(frame(data)); err != nil {
		c.t.Fatal(err)
	}
}

func (c *hostile) recv() (*pb.Envelope, error) {
	c.ctl.SetReadDeadline(time.Now().Add(20 * time.Second))
	data, err := transport.ReadFrame(c.ctl)
	if err != nil {
		return nil, err
	}
	return transport.DecodeEnvelope(data)
}

// closed waits until the service has ended the connection: it closes the
// control stream, or sends a Failure first, after which we hang up (it
// waits for that, or for a grace period).
func (c *hostile) closed() {
	c.t.Helper()
	m, err := c.recv()
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		c.t.Fatal("the service did not close the connection")
	}
	if err == nil && m.GetFailure() == nil {
		c.t.Fatalf("the service answered %s", transport.MessageName(m))
	}
}

// ready runs a migration's opening as phaul would, up to Ready: the
// service has made its directory and mounted the images tmpfs for the
// memory announced; pre-copy rounds may follow if precopy is set.
func (c *hostile) ready(id string, memory uint64, precopy bool) {
	c.t.Helper()
	c.send(&pb.Envelope{Msg: &pb.Envelope_Hello{Hello: &pb.Hello{ProtocolVersion: transport.ProtocolVersion, MigrationId: id}}})
	if m, err := c.recv(); err != nil || m.GetWelcome() == nil {
		c.t.Fatalf("no Welcome: %v %v", m, err)
	}
	c.send(&pb.Envelope{Msg: &pb.Envelope_Prepare{Prepare: &pb.Prepare{Pid: 4242, Comm: "hostile", MemoryBytes: memory, Tty: "null", Precopy: precopy}}})
	if m, err := c.recv(); err != nil || m.GetReady() == nil {
		c.t.Fatalf("no Ready: %v %v", m, err)
	}
}

// prepared is ready, then no rounds: the service has started CRIU's page
// server for the dump.
func (c *hostile) prepared(id string, memory uint64) {
	c.t.Helper()
	c.ready(id, memory, false)
	c.send(&pb.Envelope{Msg: &pb.Envelope_EndRounds{EndRounds: &pb.EndRounds{}}})
	if m, err := c.recv(); err != nil || m.GetRoundsEnded() == nil {
		c.t.Fatalf("no RoundsEnded: %v %v", m, err)
	}
}

// image is one file of the images stream.
func image(name string, size uint64, content []byte) []byte {
	b := binary.BigEndian.AppendUint16(nil, uint16(len(name)))
	b = append(b, name...)
	b = binary.BigEndian.AppendUint64(b, size)
	return append(b, content...)
}

// TestHostilePeers: a client with a valid certificate that breaks the
// protocol is refused with a logged reason and its connection closed,
// whatever it sends and at whatever step; nothing it sent stays on disk
// and nothing is written outside its migration's directory; the service
// keeps serving, and a real migration succeeds afterwards.
func TestHostilePeers(t *testing.T) {
	h := twohosts.New(t)
	svc := h.StartService(t, "--timeout", "10s")
	// sendImage opens migration id as phaul would, then sends one image
	// file (its frame) on the images stream.
	sendImage := func(id string, file []byte) func(c *hostile) {
		return func(c *hostile) {
			c.prepared(id, 1<<20)
			c.open(transport.KindImages).Write(file)
		}
	}
	hello := func(id string) *pb.Envelope {
		return &pb.Envelope{Msg: &pb.Envelope_Hello{Hello: &pb.Hello{ProtocolVersion: transport.ProtocolVersion, MigrationId: id}}}
	}
	tests := []struct {
		name string
		run  func(c *hostile)
		log  string // the reason the service logs
	}{
		{"oversized frame", func(c *hostile) { c.ctl.Write(binary.BigEndian.AppendUint32(nil, transport.MaxFrameSize+1)) }, "control frame too large"},
		{"unknown message type", func(c *hostile) {
			c.ctl.Write(frame(protoField(99, []byte("x"))))
		}, "unknown control message"},
		{"not protobuf", func(c *hostile) { c.ctl.Write(frame([]byte{0xff, 0xff, 0xff})) }, "decode control message"},
		{"commit first", func(c *hostile) { c.send(&pb.Envelope{Msg: &pb.Envelope_Commit{Commit: &pb.Commit{}}}) }, "want Hello"},
		{"prepare before hello", func(c *hostile) {
			c.send(&pb.Envelope{Msg: &pb.Envelope_Prepare{Prepare: &pb.Prepare{Pid: 1}}})
		}, "want Hello"},
		{"another protocol", func(c *hostile) {
			c.send(&pb.Envelope{Msg: &pb.Envelope_Hello{Hello: &pb.Hello{ProtocolVersion: 99, MigrationId: "00000000000000a1"}}})
		}, "protocol 99"},
		{"id with a path", func(c *hostile) { c.send(hello("../../../etc")) }, "bad migration id"},
		{"commit before restore", func(c *hostile) {
			c.send(hello("00000000000000a2"))
			c.recv()
			c.send(&pb.Envelope{Msg: &pb.Envelope_Commit{Commit: &pb.Commit{}}})
		}, "want Prepare"},
		{"image name with ..", sendImage("00000000000000a3", image("../../escaped.img", 1, []byte("x"))), "bad image"},
		{"absolute image name", sendImage("00000000000000a4", image("/tmp/escaped.img", 1, []byte("x"))), "bad image"},
		{"image name with odd characters", sendImage("00000000000000a5", image("core\n1.img", 1, []byte("x"))), "bad image"},
		{"image larger than allowed", sendImage("00000000000000a6", image("core-1.img", 1<<40, nil)), "bad image"},
		{"endless images stream", func(c *hostile) {
			// 1 MiB announced: the images tmpfs holds that and a margin,
			// and the stream that never ends fills it.
			c.prepared("00000000000000a7", 1<<20)
			st := c.open(transport.KindImages)
			chunk := bytes.Repeat([]byte{7}, 1<<20)
			go func() {
				for i := 0; ; i++ {
					if _, err := st.Write(image("pages-"+strconv.Itoa(i)+".img", uint64(len(chunk)), chunk)); err != nil {
						return
					}
				}
			}()
		}, "no space left on device"},
		{"second control stream", func(c *hostile) {
			c.prepared("00000000000000a8", 1<<20)
			c.open(transport.KindControl)
		}, "unexpected control stream"},
		{"unknown stream kind", func(c *hostile) {
			c.prepared("00000000000000a9", 1<<20)
			c.open('Z')
		}, "unexpected stream"},
		{"round not announced", func(c *hostile) {
			c.ready("00000000000000b1", 1<<20, false)
			c.send(&pb.Envelope{Msg: &pb.Envelope_Round{Round: &pb.Round{Number: 1}}})
		}, "Prepare announced none"},
		{"round out of order", func(c *hostile) {
			c.ready("00000000000000b2", 1<<20, true)
			c.send(&pb.Envelope{Msg: &pb.Envelope_Round{Round: &pb.Round{Number: 2}}})
		}, "pre-copy round 2, want 1"},
		{"dump on a round never sent", func(c *hostile) {
			c.ready("00000000000000b3", 1<<20, true)
			c.send(&pb.Envelope{Msg: &pb.Envelope_EndRounds{EndRounds: &pb.EndRounds{Keep: 3}}})
		}, "builds on round 3 of 0"},
		{"pages stream in a round", func(c *hostile) {
			c.ready("00000000000000b4", 1<<20, true)
			c.send(&pb.Envelope{Msg: &pb.Envelope_Round{Round: &pb.Round{Number: 1}}})
			c.open(transport.KindPages)
		}, "a pages stream during the pre-copy rounds"},
		{"endless rounds", func(c *hostile) {
			c.ready("00000000000000b6", 1<<20, true)
			for n := uint32(1); n <= 64; n++ {
				c.emptyRound(n)
			}
			c.send(&pb.Envelope{Msg: &pb.Envelope_Round{Round: &pb.Round{Number: 65}}})
		}, "more than 64 pre-copy rounds"},
		{"dump on a round before the last", func(c *hostile) {
			// Each round freed what the one before held of the pages it
			// stored again: only the last can be the dump's parent.
			c.ready("00000000000000b7", 1<<20, true)
			c.emptyRound(1)
			c.emptyRound(2)
			c.send(&pb.Envelope{Msg: &pb.Envelope_EndRounds{EndRounds: &pb.EndRounds{Keep: 1}}})
		}, "builds on round 1 of 2 (only the last, or none)"},
		{"carry a file never offered", func(c *hostile) {
			// No checks, so nothing offered: the service must not
			// let a source write where it likes.
			c.send(hello("00000000000000c1"))
			c.recv()
			c.send(&pb.Envelope{Msg: &pb.Envelope_Prepare{Prepare: &pb.Prepare{Pid: 4242, Comm: "hostile", MemoryBytes: 1 << 20, Tty: "null",
				Carry: []*pb.Carry{{Path: "/tmp/escaped.img", How: "whole", Size: 1}}}}})
		}, "which this host did not offer to take"},
		{"files stream not announced", func(c *hostile) {
			c.prepared("00000000000000c2", 1<<20)
			f := c.open(transport.KindFiles)
			w, _ := transport.NewFileWriter(f, &transport.Counts{})
			w.Send(context.Background(), &pb.CarriedFile{Path: "/tmp/escaped.img", How: "whole", Length: 1}, strings.NewReader("x"))
			w.Close()
		}, "unexpected files stream"},
		{"garbage in a round", func(c *hostile) {
			c.ready("00000000000000b5", 1<<20, true)
			c.send(&pb.Envelope{Msg: &pb.Envelope_Round{Round: &pb.Round{Number: 1}}})
			c.open(transport.KindRound).Write(bytes.Repeat([]byte{0xff}, 64))
		}, "round 1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := dialHostile(t, h, svc.Addr)
			tt.run(c)
			c.closed()
			if !waitLog(svc, tt.log) {
				t.Errorf("the service did not log %q:\n%s", tt.log, svc.Log())
			}
		})
	}
	// Nothing left: no migration directory, no escaped file, no mount.
	for i := 0; i < 100 && len(svc.Migrations()) > 0; i++ {
		time.Sleep(50 * time.Millisecond)
	}
	if m := svc.Migrations(); len(m) != 0 {
		t.Errorf("left in the work dir: %v", m)
	}
	for _, p := range []string{filepath.Join(svc.WorkDir, "escaped.img"), filepath.Join(filepath.Dir(svc.WorkDir), "escaped.img"), "/tmp/escaped.img"} {
		if _, err := os.Stat(p); err == nil {
			t.Errorf("a hostile peer wrote %s", p)
		}
	}
	if mounts, _ := os.ReadFile("/proc/self/mountinfo"); strings.Contains(string(mounts), svc.WorkDir) {
		t.Errorf("an images tmpfs is still mounted")
	}
	// The service still serves: a real migration.
	w := h.StartWorkload(t, twohosts.WorkloadOptions{})
	st, _ := testutil.ReadState(w.State)
	r := h.Migrate(t, context.Background(), w.Pid, svc.Addr)
	assertRunsOnB(t, h, w, r, st)
}

// protoField encodes one length-delimited field.
func protoField(num int, b []byte) []byte {
	out := binary.AppendUvarint(nil, uint64(num)<<3|2)
	out = binary.AppendUvarint(out, uint64(len(b)))
	return append(out, b...)
}

// TestConcurrentMigrationsAndBusy: migrations of different workloads to
// one service at once all succeed; beyond --max-migrations the checks
// answer a transient "busy" (exit 5) and nothing is frozen; once a place
// is free the same migration goes through.
func TestConcurrentMigrationsAndBusy(t *testing.T) {
	h := twohosts.New(t)
	svc := h.StartService(t, "--max-migrations", "3")
	type run struct {
		w      *twohosts.Workload
		before testutil.State
		r      *twohosts.Result
	}
	runs := make([]*run, 3)
	for i := range runs {
		w := h.StartWorkload(t, twohosts.WorkloadOptions{Args: []string{"--mem", "32"}})
		st, _ := testutil.ReadState(w.State)
		runs[i] = &run{w: w, before: st}
	}
	// All three at once, from one working directory (the test's): CRIU
	// mounts each tree's /proc there, so their dumps take turns
	// (criu.Dump's lock) while their migrations are in flight together.
	done := make(chan struct{})
	for _, r := range runs {
		go func() {
			defer func() { done <- struct{}{} }()
			r.r = h.Migrate(t, context.Background(), r.w.Pid, svc.Addr)
		}()
	}
	for range runs {
		<-done
	}
	ids := map[string]bool{}
	for _, r := range runs {
		assertRunsOnB(t, h, r.w, r.r, r.before)
		ids[r.r.Str("id")] = true
	}
	if len(ids) != len(runs) {
		t.Errorf("migration IDs %v: not one each", ids)
	}

	// Three migrations in flight (clients holding their places after
	// Prepare): a fourth is busy.
	var holders []*hostile
	for i := 0; i < 3; i++ {
		c := dialHostile(t, h, svc.Addr)
		c.prepared("00000000000000b"+strconv.Itoa(i), 1<<20)
		holders = append(holders, c)
	}
	w := h.StartWorkload(t, twohosts.WorkloadOptions{})
	r := h.Migrate(t, context.Background(), w.Pid, svc.Addr)
	if r.ExitCode != 5 || r.Str("outcome") != "transient" || !strings.Contains(r.Stderr+r.Str("error"), "busy") {
		t.Fatalf("a fourth migration: exit %d, outcome %q, error %q", r.ExitCode, r.Str("outcome"), r.Str("error"))
	}
	assertUntouched(t, h, w)
	holders[0].mux.Close()
	inFlight := func() int {
		st, _ := h.Status(t, svc.Addr)
		n := 0
		for _, m := range st.Migrations {
			if m.State == "in-flight" {
				n++
			}
		}
		return n
	}
	for i := 0; i < 100 && inFlight() > 2; i++ { // the service frees the place once it sees the hangup
		time.Sleep(50 * time.Millisecond)
	}
	before, _ := testutil.ReadState(w.State)
	assertRunsOnB(t, h, w, h.Migrate(t, context.Background(), w.Pid, svc.Addr), before)
}

// TestMigrateKeepsReducedPrivileges: a tree that dropped its capabilities
// migrates (the destination's comparison of the dumped credentials with
// the announced ones has no false alarm) and has none after the restore.
func TestMigrateKeepsReducedPrivileges(t *testing.T) {
	h := twohosts.New(t)
	// Not in a PID namespace of its own: CRIU cannot dump an
	// unprivileged task whose /proc is not its own. So a shell's job, and
	// a service in a PID namespace of its own for the PIDs to be free.
	svc := h.StartServiceInPidns(t)
	w := h.StartWorkload(t, twohosts.WorkloadOptions{FromShell: true,
		Wrap: []string{"setpriv", "--inh-caps=-all", "--bounding-set=-all", "--groups=4,27"}})
	src, err := proc.ReadStatus(w.Pid)
	if err != nil || src.CapEff != 0 || src.CapBnd != 0 {
		t.Fatalf("the workload kept capabilities: %+v %v", src, err)
	}
	st, _ := testutil.ReadState(w.State)
	r := h.Migrate(t, context.Background(), w.Pid, svc.Addr)
	dest := assertRunsOn(t, h, svc, w, r, st)
	got, err := proc.ReadStatus(dest)
	if err != nil || got.CapEff != 0 || got.CapPrm != 0 || got.CapBnd != 0 || fmt.Sprint(got.Groups) != fmt.Sprint(src.Groups) {
		t.Errorf("restored credentials %+v, source %+v (%v)", got, src, err)
	}
}

// emptyRound sends round n with no image in it (CLOSE only, as phaul
// writes a round of a tree with no memory) and waits for its RoundDone.
func (c *hostile) emptyRound(n uint32) {
	c.t.Helper()
	c.send(&pb.Envelope{Msg: &pb.Envelope_Round{Round: &pb.Round{Number: n}}})
	st := c.open(transport.KindRound)
	cw, err := transport.NewCompressWriter(st, nil, new(atomic.Int64))
	if err != nil {
		c.t.Fatal(err)
	}
	cw.Write(criu.PageIov{Cmd: criu.PSIovClose}.Append(nil))
	cw.Close()
	st.Close()
	if m, err := c.recv(); err != nil || m.GetRoundDone() == nil {
		c.t.Fatalf("round %d: no RoundDone: %v %v", n, m, err)
	}
}
