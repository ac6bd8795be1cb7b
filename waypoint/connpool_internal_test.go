package waypoint

import (
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/ambitmesh/ambit/waypoint/config"
)

// TestKeepaliveSocket: a cluster's tcp_keepalive turns SO_KEEPALIVE on
// with its idle time, interval and probes on an upstream socket; without
// it the socket is left as dialled.
func TestKeepaliveSocket(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	opt := func(c net.Conn, level, name int) int {
		t.Helper()
		var v int
		var gerr error
		raw, err := c.(*net.TCPConn).SyscallConn()
		if err != nil {
			t.Fatal(err)
		}
		raw.Control(func(fd uintptr) { v, gerr = syscall.GetsockoptInt(int(fd), level, name) })
		if gerr != nil {
			t.Fatal(gerr)
		}
		return v
	}
	// (net.Dialer turns keepalive on by default: off here, as it would
	// be with a dialer that leaves it to the cluster.)
	d := net.Dialer{KeepAlive: -1}
	for _, tc := range []struct {
		name                       string
		ka                         *config.Keepalive
		on, idle, interval, probes int
	}{
		{"off", nil, 0, -1, -1, -1},
		{"istio's tcpKeepalive", &config.Keepalive{Probes: 3, Time: 30 * time.Second, Interval: 7 * time.Second}, 1, 30, 7, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := d.Dial("tcp", ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			withKeepalive(&config.Cluster{Pool: config.ConnPool{Keepalive: tc.ka}}, c)
			if got := opt(c, syscall.SOL_SOCKET, syscall.SO_KEEPALIVE); got != tc.on {
				t.Errorf("SO_KEEPALIVE: got %d, want %d", got, tc.on)
			}
			if tc.on == 0 {
				return
			}
			for _, o := range []struct {
				name      string
				opt, want int
			}{{"TCP_KEEPIDLE", syscall.TCP_KEEPIDLE, tc.idle}, {"TCP_KEEPINTVL", syscall.TCP_KEEPINTVL, tc.interval}, {"TCP_KEEPCNT", syscall.TCP_KEEPCNT, tc.probes}} {
				if got := opt(c, syscall.IPPROTO_TCP, o.opt); got != o.want {
					t.Errorf("%s: got %d, want %d", o.name, got, o.want)
				}
			}
		})
	}
}

// TestRetryBudget: with a retry budget, the retries allowed at once are
// budget_percent of the active and pending requests, at least
// min_retry_concurrency; without, max_retries.
func TestRetryBudget(t *testing.T) {
	budget := &config.Cluster{CircuitBreakers: config.CircuitBreakers{MaxRetries: 3, RetryBudget: true, BudgetPercent: 20, MinRetryConcurrency: 3}}
	plain := &config.Cluster{CircuitBreakers: config.CircuitBreakers{MaxRetries: 5}}
	for _, tc := range []struct {
		cl     *config.Cluster
		active int64
		want   int
	}{
		{budget, 0, 3},
		{budget, 10, 3},
		{budget, 100, 20},
		{plain, 100, 5},
	} {
		cs := &clusterState{}
		cs.active.Store(tc.active)
		if got := cs.maxRetries(tc.cl); got != tc.want {
			t.Errorf("budget %v, %d active: got %d retries, want %d", tc.cl.CircuitBreakers.RetryBudget, tc.active, got, tc.want)
		}
	}
}
