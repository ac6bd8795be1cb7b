package echo

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"strings"
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
	// Ends, for the held client, says why each connection it replaced
	// ended, with the time since the probe started: the peer closed it
	// ("EOF"), an answer asked to close it, or a request on it failed.
	Ends []string `json:"ends,omitempty"`
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
// ends: one that keeps one connection open as long as it lives (and
// opens another only when the peer ended it or a request on it failed),
// one that opens a new connection for each request; each request may
// take up to two seconds. Every second, and once at the end (Done), it
// writes the counts so far as a line of JSON to w: what an upgrade does
// to open and to new connections.
func Probe(ctx context.Context, url string, interval time.Duration, w io.Writer) error {
	start := time.Now()
	var mu sync.Mutex
	res := ProbeResult{}
	// count records one request's outcome.
	count := func(c *ProbeCounts, err error) {
		mu.Lock()
		defer mu.Unlock()
		if err == nil {
			c.OK++
			return
		}
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
	}
	every := func(f func() error, c *ProbeCounts) {
		tick := time.NewTicker(interval)
		defer tick.Stop()
		for {
			err := f()
			if done(ctx) {
				return // ended by the probe's end, not by the server
			}
			count(c, err)
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	}
	held := &heldClient{url: url, ended: func(conns int, why string) {
		mu.Lock()
		defer mu.Unlock()
		res.Held.Conns = conns
		if why != "" {
			res.Held.Ends = append(res.Held.Ends, time.Since(start).Round(100*time.Millisecond).String()+": "+why)
		}
	}}
	defer held.close("")
	newConns := func() error {
		tr := &http.Transport{DisableKeepAlives: true}
		defer tr.CloseIdleConnections()
		client := &http.Client{Transport: tr, Timeout: probeTimeout}
		trace := &httptrace.ClientTrace{GotConn: func(httptrace.GotConnInfo) {
			mu.Lock()
			res.New.Conns++
			mu.Unlock()
		}}
		_, err := HTTP(httptrace.WithClientTrace(ctx, trace), client, url, nil)
		return err
	}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); every(func() error { return held.get(ctx) }, &res.Held) }()
	go func() { defer wg.Done(); every(newConns, &res.New) }()
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

// probeTimeout bounds each request of the probe.
const probeTimeout = 2 * time.Second

// heldClient sends HTTP/1.1 requests on one TCP connection for as long
// as the connection lasts. It is not net/http's Transport, whose
// connection reuse is a heuristic: it closes a kept-alive connection
// itself when the goroutine writing a request reports the write more
// than 50 ms after the answer was read (maxWriteWaitBeforeConnReuse,
// golang/go#7569), which a CPU-starved client on a loaded node does, and
// that looks exactly like a connection the mesh ended. Here a connection
// is replaced only when the peer closed it, an answer asked for it, or a
// request on it failed, and Ends says which.
type heldClient struct {
	url   string
	ended func(conns int, why string)

	conns int
	conn  net.Conn
	br    *bufio.Reader
}

// get sends one GET. A connection found closed by the peer before the
// request is replaced first; a request that fails on a reused
// connection before any of the answer arrived is sent once more on a
// new one, as net/http does for an idempotent request (the peer may have
// closed the connection while the request was on its way).
func (h *heldClient) get(ctx context.Context) error {
	if h.conn != nil {
		if why := h.idleEnd(); why != "" {
			h.close(why)
		}
	}
	reused := h.conn != nil
	err, retry := h.try(ctx)
	if err != nil && reused && retry && !done(ctx) {
		h.close(err.Error())
		err, _ = h.try(ctx)
	}
	if err != nil {
		why := err.Error()
		if done(ctx) {
			why = "" // the probe's end, not the connection's
		}
		h.close(why)
	}
	return err
}

// done reports whether ctx has ended or is about to: its deadline has
// passed (its timer may not have fired yet).
func done(ctx context.Context) bool {
	d, ok := ctx.Deadline()
	return ctx.Err() != nil || ok && !time.Now().Before(d)
}

// idleEnd says why the idle connection cannot be used any more, or ""
// if it can: a read finds at once that the peer closed it ("EOF") or
// an error. An idle connection has nothing to read: data there is a
// protocol error, and the connection is not used again either.
func (h *heldClient) idleEnd() string {
	h.conn.SetReadDeadline(time.Now().Add(time.Millisecond))
	_, err := h.br.Peek(1)
	var ne net.Error
	switch {
	case err == nil:
		return "data on the idle connection"
	case errors.As(err, &ne) && ne.Timeout():
		return ""
	default:
		return err.Error()
	}
}

// try sends the request and reads the answer on the held connection,
// dialling one if there is none. retry reports that nothing of the
// answer arrived.
func (h *heldClient) try(ctx context.Context) (err error, retry bool) {
	u, err := url.Parse(h.url)
	if err != nil {
		return fmt.Errorf("get %s: %w", h.url, err), false
	}
	ctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	if h.conn == nil {
		addr := u.Host
		if u.Port() == "" {
			addr = net.JoinHostPort(u.Hostname(), "80")
		}
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			return fmt.Errorf("get %s: %w", h.url, err), false
		}
		h.conn, h.br = c, bufio.NewReader(c)
		h.conns++
		h.ended(h.conns, "")
	}
	deadline, _ := ctx.Deadline()
	h.conn.SetDeadline(deadline)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, h.url, nil)
	if err != nil {
		return fmt.Errorf("get %s: %w", h.url, err), false
	}
	if err := req.Write(h.conn); err != nil {
		return fmt.Errorf("get %s: %w", h.url, err), true
	}
	if _, err := h.br.Peek(1); err != nil {
		var ne net.Error
		return fmt.Errorf("get %s: %w", h.url, err), !errors.As(err, &ne) || !ne.Timeout()
	}
	resp, err := http.ReadResponse(h.br, req)
	if err != nil {
		return fmt.Errorf("get %s: %w", h.url, err), false
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	resp.Body.Close()
	if err != nil {
		return fmt.Errorf("read %s: %w", h.url, err), false
	}
	if resp.Close {
		h.close("answer asked to close the connection")
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("get %s: status %d: %s", h.url, resp.StatusCode, strings.TrimSpace(string(body))), false
	}
	var rep Report
	if err := json.Unmarshal(body, &rep); err != nil {
		return fmt.Errorf("decode report from %s: %w", h.url, err), false
	}
	return nil, false
}

// close ends the held connection, if any, and records why.
func (h *heldClient) close(why string) {
	if h.conn == nil {
		return
	}
	h.conn.Close()
	h.conn, h.br = nil, nil
	h.ended(h.conns, why)
}
