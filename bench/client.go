package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// The client of a migrated server: it measures the pause a connected
// client sees, across a migration that moves the server's address.

const (
	clientCommand = "client"
	// serviceAddr is the address phaul's runs move with the workload
	// (--move-address); it serves on port servicePort+1.
	serviceAddr = "10.77.0.10"
	serviceMask = "/24"
	clientEvery = 5 * time.Millisecond
)

// clientResult is what `phaul-bench client` prints at its end.
type clientResult struct {
	Answers int     `json:"answers"`
	MaxGap  float64 `json:"max_gap"` // the longest wait between two answers, seconds
	Error   string  `json:"error,omitempty"`
}

// clientMain is `phaul-bench client ADDR`, run in the client's namespace:
// it holds one connection to ADDR and asks "GET N" every 5 ms, each
// answer checked to be to its request and from the same process (its
// token), until SIGTERM; then it prints a clientResult. It prints "ready"
// after the first answer.
func clientMain(args []string) error {
	if len(args) != 1 {
		return errors.New("usage: client ADDR")
	}
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, os.Interrupt)
	conn, err := net.DialTimeout("tcp", args[0], 10*time.Second)
	if err != nil {
		return err
	}
	defer conn.Close()
	r := bufio.NewReader(conn)
	var res clientResult
	var last time.Time
	token := ""
	for n := 1; ; n++ {
		select {
		case <-stop:
			return json.NewEncoder(os.Stdout).Encode(res)
		case <-time.After(clientEvery):
		}
		err := ask(conn, r, n, &token)
		if err != nil {
			res.Error = err.Error()
			<-stop
			return json.NewEncoder(os.Stdout).Encode(res)
		}
		now := time.Now()
		if res.Answers > 0 {
			res.MaxGap = max(res.MaxGap, now.Sub(last).Seconds())
		} else {
			fmt.Fprintln(os.Stderr, "ready")
		}
		res.Answers++
		last = now
	}
}

// ask sends request n and checks its answer.
func ask(conn net.Conn, r *bufio.Reader, n int, token *string) error {
	conn.SetDeadline(time.Now().Add(time.Minute))
	if _, err := fmt.Fprintf(conn, "GET %d\n", n); err != nil {
		return fmt.Errorf("request %d: %w", n, err)
	}
	line, err := r.ReadString('\n')
	if err != nil {
		return fmt.Errorf("answer to request %d: %w", n, err)
	}
	var tok, req string
	for _, f := range strings.Fields(line) {
		if v, ok := strings.CutPrefix(f, "token="); ok {
			tok = v
		} else if v, ok := strings.CutPrefix(f, "req="); ok {
			req = v
		}
	}
	if req != strconv.Itoa(n) {
		return fmt.Errorf("request %d answered as %q", n, strings.TrimSpace(line))
	}
	if *token != "" && tok != *token {
		return fmt.Errorf("request %d answered by another process: %q", n, strings.TrimSpace(line))
	}
	*token = tok
	return nil
}
