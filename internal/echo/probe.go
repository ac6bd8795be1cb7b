package echo

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"sync"
	"time"
)

// ProbeCounts is what one probe client saw.
type ProbeCounts struct {
	// OK and Failed count requests; Conns counts the connections the
	// client opened (for the held client, more than one means the open
	// connection was lost and a new one made).
	OK     int `json:"ok"`
	Failed int `json:"failed"`
	Conns  int `json:"conns"`
	// Errors counts failures by message; FirstFail and LastFail are the
	// times of the first and last failure since the probe started.
	Errors    map[string]int `json:"errors,omitempty"`
	FirstFail string         `json:"firstFail,omitempty"`
	LastFail  string         `json:"lastFail,omitempty"`
}

// ProbeResult is a line Probe writes: the two clients' counts so far.
type ProbeResult struct {
	Elapsed string `json:"elapsed"`
	// Held sends every request on one kept-alive connection, New opens a
	// new connection for each.
	Held ProbeCounts `json:"held"`
	New  ProbeCounts `json:"new"`
	Done bool        `json:"done,omitempty"`
}

// Probe sends a GET to url every interval from two clients until ctx
// ends: one that keeps one connection open as long as it lives, one that
// opens a new connection for each request; each request may take up to
// two seconds. Every second, and once at the end (Done), it writes the
// counts so far as a line of JSON to w: what an upgrade does to open and
// to new connections.
func Probe(ctx context.Context, url string, interval time.Duration, w io.Writer) error {
	start := time.Now()
	var mu sync.Mutex
	res := ProbeResult{}
	run := func(c *ProbeCounts, keepAlive bool) {
		tr := &http.Transport{DisableKeepAlives: !keepAlive, MaxIdleConnsPerHost: 1}
		defer tr.CloseIdleConnections()
		client := &http.Client{Transport: tr, Timeout: 2 * time.Second}
		tick := time.NewTicker(interval)
		defer tick.Stop()
		for {
			trace := &httptrace.ClientTrace{GotConn: func(i httptrace.GotConnInfo) {
				if !i.Reused {
					mu.Lock()
					c.Conns++
					mu.Unlock()
				}
			}}
			_, err := HTTP(httptrace.WithClientTrace(ctx, trace), client, url, nil)
			mu.Lock()
			if ctx.Err() != nil {
				mu.Unlock()
				return
			}
			if err != nil {
				c.Failed++
				if c.Errors == nil {
					c.Errors = map[string]int{}
				}
				c.Errors[err.Error()]++
				at := time.Since(start).Round(100 * time.Millisecond).String()
				if c.FirstFail == "" {
					c.FirstFail = at
				}
				c.LastFail = at
				// A broken kept-alive connection is not used again.
				tr.CloseIdleConnections()
			} else {
				c.OK++
			}
			mu.Unlock()
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); run(&res.Held, true) }()
	go func() { defer wg.Done(); run(&res.New, false) }()
	enc := json.NewEncoder(w)
	write := func(done bool) error {
		mu.Lock()
		defer mu.Unlock()
		res.Elapsed, res.Done = time.Since(start).Round(time.Second).String(), done
		if err := enc.Encode(res); err != nil {
			return fmt.Errorf("write probe result: %w", err)
		}
		return nil
	}
	report := time.NewTicker(time.Second)
	defer report.Stop()
	for {
		select {
		case <-ctx.Done():
			wg.Wait()
			return write(true)
		case <-report.C:
			if err := write(false); err != nil {
				return err
			}
		}
	}
}
