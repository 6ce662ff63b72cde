package migrate_test

import (
	"cmp"
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/phaul/phaul/internal/testutil"
	"github.com/phaul/phaul/internal/twohosts"
	"github.com/phaul/phaul/netmove"
)

// A server bound to a service address on host a, and clients on the
// switch holding connections to it, asking through the whole migration
// (docs/reliability.md, "Addresses").

// serviceSetup gives the hosts what an address on subnet needs: IPv6 has
// no addresses of its own in the harness.
func serviceSetup(t *testing.T, h *twohosts.Hosts, service netip.Prefix) {
	t.Helper()
	links := map[string]string{"a": h.Link("a"), "b": h.Link("b"), "c": h.Switch()}
	if service.Addr().Is6() {
		for i, host := range []string{"a", "b", "c"} {
			p := netip.PrefixFrom(netip.MustParseAddr(fmt.Sprintf("fd00:77::%d", i+1)), 64)
			if err := h.Do(host, func() error { return netmove.Add(netmove.Assigned{Prefix: p, Link: links[host]}) }); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := h.Do("a", func() error { return netmove.Add(netmove.Assigned{Prefix: service, Link: links["a"]}) }); err != nil {
		t.Fatal(err)
	}
}

// holds says whether host has ip.
func holds(t *testing.T, h *twohosts.Hosts, host string, ip netip.Addr) bool {
	t.Helper()
	var here bool
	if err := h.Do(host, func() error {
		_, err := netmove.Lookup(ip)
		here = err == nil
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return here
}

// tables are host's nftables tables.
func tables(t *testing.T, h *twohosts.Hosts, host string) []string {
	t.Helper()
	var ts []string
	if err := h.Do(host, func() (err error) { ts, err = netmove.Tables(); return err }); err != nil {
		t.Fatal(err)
	}
	return ts
}

// goOn waits until each client has read n more answers.
func goOn(t *testing.T, clients []*twohosts.Client, n int) {
	t.Helper()
	if err := answering(clients, n); err != nil {
		t.Fatal(err)
	}
}

// answering waits until each client has read n more answers, or says
// why one did not.
func answering(clients []*twohosts.Client, n int) error {
	for i, c := range clients {
		want := c.Count() + n
		deadline := time.Now().Add(30 * time.Second)
		for c.Count() < want {
			if _, err := c.Result(); err != nil {
				return fmt.Errorf("client %d: %w", i, err)
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("client %d: %d answers, no more for 30 s", i, c.Count())
			}
			c.Poke()
			time.Sleep(5 * time.Millisecond)
		}
	}
	return nil
}

// checkAnswers: one connection, each request answered once and in
// order, by one process; the longest wait between answers is returned.
func checkAnswers(t *testing.T, c *twohosts.Client) time.Duration {
	t.Helper()
	answers, err := c.Stop()
	if err != nil {
		t.Fatalf("the client's connection: %v", err)
	}
	return answersInOrder(t, answers)
}

// answersInOrder checks answers: each to its request, in order, from one
// process; it returns the longest wait between two.
func answersInOrder(t *testing.T, answers []twohosts.Answer) time.Duration {
	t.Helper()
	var gap time.Duration
	for i, a := range answers {
		if a.Req != i+1 {
			t.Fatalf("answer %d is to request %d: %q", i+1, a.Req, a.Line)
		}
		if a.Token() != answers[0].Token() {
			t.Fatalf("answer %d from another process: %q, first %q", i+1, a.Line, answers[0].Line)
		}
		if i > 0 {
			gap = max(gap, a.At.Sub(answers[i-1].At))
		}
	}
	return gap
}

func TestMoveAddress(t *testing.T) {
	for _, c := range []struct {
		name    string
		service string
		clients int
		idle    bool
		flag    string // --move-address (default: the service address)
	}{
		{"one busy connection", "10.77.0.10/24", 1, false, ""},
		{"one idle connection", "10.77.0.10/24", 1, true, ""},
		{"three connections, auto", "10.77.0.10/24", 3, false, "auto"},
		{"ipv6", "fd00:77::10/64", 1, false, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			h := twohosts.New(t)
			service := netip.MustParsePrefix(c.service)
			ip := service.Addr()
			serviceSetup(t, h, service)
			svc := h.StartService(t)
			listen := net.JoinHostPort(ip.String(), "7000")
			w := h.StartWorkload(t, twohosts.WorkloadOptions{Args: []string{"--listen", listen}})
			every := 5 * time.Millisecond
			if c.idle {
				every = 0
			}
			var clients []*twohosts.Client
			for range c.clients {
				clients = append(clients, h.StartClient(t, listen, every))
			}
			goOn(t, clients, 3)

			r := h.Migrate(t, context.Background(), w.Pid, svc.Addr, "--move-address", cmp.Or(c.flag, ip.String()))
			if r.ExitCode != 0 || !r.Bool("running") {
				t.Fatalf("migrate failed (exit %d): %v\n%s", r.ExitCode, r.Report["error"], r.Stderr)
			}
			goOn(t, clients, 20)
			for i, cl := range clients {
				gap := checkAnswers(t, cl)
				t.Logf("client %d: longest wait for an answer %v", i, gap)
			}
			dest := int(r.Num("dest_pid"))
			if !twohosts.InNetns(dest, h.NetnsPath("b")) {
				t.Errorf("the tree (pid %d) is not on host b", dest)
			}
			if holds(t, h, "a", ip) || !holds(t, h, "b", ip) {
				t.Errorf("%s on a: %v, on b: %v; want on b only", ip, holds(t, h, "a", ip), holds(t, h, "b", ip))
			}
			// A new connection reaches b: its guard is down.
			if c, err := h.DialFrom("c", listen); err != nil {
				t.Errorf("a new connection to %s: %v", listen, err)
			} else {
				c.Close()
			}
			moved := fmt.Sprint(r.Report["addresses"])
			if !strings.Contains(moved, service.String()+": "+h.Link("a")+" -> "+h.Link("b")) || int(r.Num("connections")) != c.clients {
				t.Errorf("report: addresses %s, connections %v; want %s moved, %d connections", moved, r.Report["connections"], service, c.clients)
			}
			if ts := tables(t, h, "a"); slices.ContainsFunc(ts, func(s string) bool { return strings.HasPrefix(s, "CRIU-") }) {
				t.Errorf("CRIU's connection locks stay on the source: %v\n%s", ts, r.Stderr)
			}
			if ts := tables(t, h, "b"); len(ts) > 0 {
				t.Errorf("tables left on the destination: %v", ts)
			}
		})
	}
}

// A failure at the restore puts the address back on a, announced, before
// the source tree resumes: the client's connection goes on there.
func TestMoveAddressRollback(t *testing.T) {
	h := twohosts.New(t)
	service := netip.MustParsePrefix("10.77.0.10/24")
	ip := service.Addr()
	serviceSetup(t, h, service)
	svc := h.StartService(t)
	listen := net.JoinHostPort(ip.String(), "7000")
	w := h.StartWorkload(t, twohosts.WorkloadOptions{Args: []string{"--listen", listen}})
	client := h.StartClient(t, listen, 5*time.Millisecond)
	goOn(t, []*twohosts.Client{client}, 3)

	killed := make(chan struct{})
	go func() {
		defer close(killed)
		for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
			if strings.Contains(svc.Log(), "phase=restore") {
				killCRIU(t, svc.Cmd.Process.Pid)
				return
			}
		}
		t.Error("the service never reached the restore")
	}()
	r := h.Migrate(t, context.Background(), w.Pid, svc.Addr, "--move-address", ip.String())
	<-killed
	if r.ExitCode == 0 || !r.Bool("source_running") {
		t.Fatalf("migrate: exit %d, source running %v; want a failure with the source running\n%s", r.ExitCode, r.Bool("source_running"), r.Stderr)
	}
	goOn(t, []*twohosts.Client{client}, 20)
	gap := checkAnswers(t, client)
	t.Logf("longest wait for an answer %v", gap)
	if !holds(t, h, "a", ip) || holds(t, h, "b", ip) {
		t.Errorf("%s on a: %v, on b: %v; want back on a only", ip, holds(t, h, "a", ip), holds(t, h, "b", ip))
	}
	if ts := tables(t, h, "b"); len(ts) > 0 {
		t.Errorf("tables left on the destination: %v", ts)
	}
	if copies := h.Copies(w, "b"); len(copies) > 0 {
		t.Errorf("copies on b: %v", copies)
	}
}

// Post-copy cannot move addresses yet: refused with that reason before
// anything is copied or frozen, also when pre-copy rounds were asked for;
// the tree goes on on a, its address with it.
func TestPostcopyRefusesMovedAddress(t *testing.T) {
	h := twohosts.New(t)
	service := netip.MustParsePrefix("10.77.0.10/24")
	serviceSetup(t, h, service)
	svc := h.StartService(t)
	w := h.StartWorkload(t, twohosts.WorkloadOptions{Args: []string{"--listen", "10.77.0.10:7000"}})
	st, _ := testutil.ReadState(w.State)
	r := h.Migrate(t, context.Background(), w.Pid, svc.Addr, "--postcopy", "--precopy=on", "--move-address", service.String())
	if r.ExitCode == 0 || !strings.Contains(r.Str("error"), "--postcopy cannot move addresses yet") {
		t.Fatalf("exit %d, error %q: want the refusal", r.ExitCode, r.Str("error"))
	}
	if r.Report["rounds"] != nil || !r.Bool("source_running") {
		t.Errorf("rounds %v, source running %v: want no round, the tree running", r.Report["rounds"], r.Report["source_running"])
	}
	if _, err := testutil.WaitCount(w.State, st.Count+5, 5*time.Second); err != nil {
		t.Errorf("the tree does not count on: %v", err)
	}
	if !holds(t, h, "a", service.Addr()) || holds(t, h, "b", service.Addr()) {
		t.Error("the address left a")
	}
}
