package twohosts

import (
	"bufio"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// AddrC is the client's address (on the switch both hosts plug into).
const AddrC = "10.77.0.3"

// Client holds one TCP connection from the client namespace (c) to a
// workload's server and asks "GET N" every interval (N counting from 1),
// reading each answer before the next request; Idle makes it wait
// instead until Poke.
type Client struct {
	every time.Duration
	poke  chan struct{}
	stop  chan struct{}
	done  chan struct{}

	mu      sync.Mutex
	answers []Answer
	err     error
}

// Answer is one answer the client read.
type Answer struct {
	At   time.Time
	Line string
	Req  int // the N of the request it answered, read from its "req=N"
}

// Token is the workload's token in the answer.
func (a Answer) Token() string { return field(a.Line, "token") }

func field(line, key string) string {
	for _, f := range strings.Fields(line) {
		if v, ok := strings.CutPrefix(f, key+"="); ok {
			return v
		}
	}
	return ""
}

// StartClient connects from the client namespace to addr and starts
// asking; every 0 means idle: one request now, then one per Poke. It is
// stopped when the test ends.
func (h *Hosts) StartClient(t testing.TB, addr string, every time.Duration) *Client {
	t.Helper()
	c := &Client{every: every, poke: make(chan struct{}), stop: make(chan struct{}), done: make(chan struct{})}
	conn, err := h.DialFrom("c", addr)
	if err != nil {
		t.Fatalf("client: connect to %s: %v", addr, err)
	}
	go c.run(conn)
	t.Cleanup(func() { c.Stop() })
	deadline := time.Now().Add(10 * time.Second)
	for c.Count() == 0 {
		if _, err := c.Result(); err != nil || time.Now().After(deadline) {
			t.Fatalf("client: no first answer from %s: %v", addr, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
	return c
}

func (c *Client) run(conn net.Conn) {
	defer close(c.done)
	defer conn.Close()
	r := bufio.NewReader(conn)
	for n := 1; ; n++ {
		conn.SetDeadline(time.Now().Add(time.Minute))
		if _, err := fmt.Fprintf(conn, "GET %d\n", n); err != nil {
			c.fail(fmt.Errorf("request %d: %w", n, err))
			return
		}
		line, err := r.ReadString('\n')
		if err != nil {
			c.fail(fmt.Errorf("answer to request %d: %w", n, err))
			return
		}
		req, _ := strconv.Atoi(field(line, "req"))
		c.mu.Lock()
		c.answers = append(c.answers, Answer{At: time.Now(), Line: strings.TrimSpace(line), Req: req})
		c.mu.Unlock()
		wait := (<-chan time.Time)(nil)
		if c.every > 0 {
			wait = time.After(c.every)
		}
		select {
		case <-c.stop:
			return
		case <-c.poke:
		case <-wait:
		}
	}
}

func (c *Client) fail(err error) {
	c.mu.Lock()
	c.err = err
	c.mu.Unlock()
}

// Poke makes an idle client send its next request.
func (c *Client) Poke() {
	select {
	case c.poke <- struct{}{}:
	case <-c.done:
	}
}

// Count is how many answers it has read.
func (c *Client) Count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.answers)
}

// Result is what it read so far, and the error that ended it if any.
func (c *Client) Result() ([]Answer, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]Answer(nil), c.answers...), c.err
}

// Stop ends it and returns what it read.
func (c *Client) Stop() ([]Answer, error) {
	select {
	case <-c.stop:
	default:
		close(c.stop)
	}
	<-c.done
	return c.Result()
}
