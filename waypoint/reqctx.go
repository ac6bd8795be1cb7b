package waypoint

import (
	"context"
	"errors"
	"math"
	"net/http"
	"sync"
	"time"
)

// streamTimer is a request's context, and its route timeout (a deadline
// over every try and the whole response) and stream idle timeout (the
// route's idle_timeout, else the connection manager's
// stream_idle_timeout: nothing moved for idle) on one timer, with the
// timeout that fired kept for fired. Activity is a timestamp store; the
// timer re-arms itself for what is left.
//
// It is a context of its own rather than context.WithCancelCause's, for
// what a request costs: a cancellable context per request, each try's
// context.AfterFunc on it (to end the upstream connection if the request
// is cancelled) and the timer were about 14 allocations and a fifth of
// the objects the waypoint allocated per request. Here a try's
// connection registers in a field (setAbort), and the client's
// connection cancels the request in progress through its connCtx,
// registered once per connection, not once per request.
type streamTimer struct {
	parent   context.Context
	idle     time.Duration // 0: none
	deadline time.Time     // zero: no route timeout
	// conn is the connection's connCtx that cancels s when the
	// connection ends (nil: stopParent, context.AfterFunc's on parent).
	conn       *connCtx
	stopParent func() bool

	mu   sync.Mutex
	last time.Time
	t    *time.Timer // nil once stopped
	why  error       // the timeout that fired, nil while none has
	err  error       // the context's, once cancelled
	done chan struct{}
	// abort is the try's upstream connection, ended if s is cancelled
	// while it is set.
	abort aborter
	// afters are AfterFunc's, run when s is cancelled.
	afters []*afterFunc
}

// aborter is an upstream exchange that a cancelled request ends.
type aborter interface{ abort() }

// The timeouts a streamTimer fires.
var (
	errRouteTimeout = errors.New("route timeout")
	errStreamIdle   = errors.New("stream idle timeout")
)

// newStreamTimer starts the timeouts (route and idle, 0 for none) of a
// request whose context is ctx, and returns the request's context, which
// they cancel with context.Canceled, as its parent's cancellation does
// with the parent's error; stop ends it.
//
// s, if not nil, is where the timer is made (unused before).
func newStreamTimer(ctx context.Context, s *streamTimer, route, idle time.Duration) (context.Context, *streamTimer) {
	now := time.Now()
	if s == nil {
		s = new(streamTimer)
	}
	s.parent, s.idle, s.last = ctx, idle, now
	if route > 0 {
		s.deadline = now.Add(route)
	}
	if route > 0 || idle > 0 {
		d, _ := s.left(now)
		s.t = time.AfterFunc(d, s.check)
	}
	if cc, ok := ctx.Value(connCtxKey{}).(*connCtx); ok && cc.Done() == ctx.Done() {
		// Nothing between the connection and the request cancels.
		s.conn = cc
		cc.begin(s)
	} else {
		s.stopParent = context.AfterFunc(ctx, func() { s.cancel(ctx.Err()) })
	}
	return s, s
}

// left is the time until the first timeout, and which (s.mu held, or
// s not yet shared); the route timeout wins a tie.
func (s *streamTimer) left(now time.Time) (time.Duration, error) {
	d, why := time.Duration(math.MaxInt64), error(nil)
	if s.idle > 0 {
		d, why = s.idle-now.Sub(s.last), errStreamIdle
	}
	if !s.deadline.IsZero() {
		if r := s.deadline.Sub(now); r <= d {
			d, why = r, errRouteTimeout
		}
	}
	return d, why
}

func (s *streamTimer) check() {
	s.mu.Lock()
	if s.t == nil || s.err != nil {
		s.mu.Unlock()
		return
	}
	d, why := s.left(time.Now())
	if d > 0 {
		s.t.Reset(d)
		s.mu.Unlock()
		return
	}
	s.why = why
	s.mu.Unlock()
	s.cancel(context.Canceled)
}

// cancel ends the request's context with err (once) and the try's
// upstream exchange.
func (s *streamTimer) cancel(err error) {
	s.mu.Lock()
	if s.err != nil {
		s.mu.Unlock()
		return
	}
	s.err = err
	if s.done != nil {
		close(s.done)
	}
	a, afters := s.abort, s.afters
	s.abort, s.afters = nil, nil
	s.mu.Unlock()
	if a != nil {
		a.abort()
	}
	for _, e := range afters {
		go e.f()
	}
}

// touch marks activity (a no-op without an idle timeout, and for a nil
// s).
func (s *streamTimer) touch() {
	if s == nil || s.idle == 0 {
		return
	}
	s.mu.Lock()
	s.last = time.Now()
	s.mu.Unlock()
}

// stop ends the timeouts and cancels the context (the request is done).
func (s *streamTimer) stop() {
	s.mu.Lock()
	if s.t != nil {
		s.t.Stop()
		s.t = nil
	}
	s.mu.Unlock()
	if s.conn != nil {
		s.conn.end(s)
	} else if s.stopParent != nil {
		s.stopParent()
	}
	s.cancel(context.Canceled)
}

// fired is the timeout that fired: errRouteTimeout, errStreamIdle, or
// nil (also for a nil streamTimer: no timeouts).
func (s *streamTimer) fired() error {
	if s == nil {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.why
}

// setAbort has a ended if the request is cancelled before clearAbort;
// false if it already is (a is not kept).
func (s *streamTimer) setAbort(a aborter) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		return false
	}
	s.abort = a
	return true
}

// clearAbort takes a back; false if the request was cancelled with it
// set (a was ended, or is being).
func (s *streamTimer) clearAbort(a aborter) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.abort == a {
		s.abort = nil
		return true
	}
	return false
}

func (s *streamTimer) Deadline() (time.Time, bool) { return s.parent.Deadline() }

func (s *streamTimer) Done() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.done == nil {
		s.done = make(chan struct{})
		if s.err != nil {
			close(s.done)
		}
	}
	return s.done
}

func (s *streamTimer) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

func (s *streamTimer) Value(key any) any { return s.parent.Value(key) }

// AfterFunc runs f in a goroutine of its own once s is cancelled (at
// once if it is), unless stopped first. context.AfterFunc and the
// contexts made from s (a try's timeout) find it by this method;
// without it, each would start a goroutine to wait for s.
func (s *streamTimer) AfterFunc(f func()) (stop func() bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		go f()
		return func() bool { return false }
	}
	e := &afterFunc{f: f}
	s.afters = append(s.afters, e)
	return func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		for i, a := range s.afters {
			if a == e {
				s.afters = append(s.afters[:i], s.afters[i+1:]...)
				return true
			}
		}
		return false // run, or being run
	}
}

type afterFunc struct{ f func() }

// connCtx is the context of a client's HTTP/1 connection: the stream's
// context, and the request in progress on it, which the connection's
// end cancels. One context.AfterFunc per connection, not per request.
type connCtx struct {
	context.Context
	stop func() bool

	mu  sync.Mutex
	cur *streamTimer

	// outHeader is the header map of the connection's HTTP/1.1 tries
	// (the router's, one try at a time).
	outHeader headerScratch
}

// headerScratch is a header map and the slice its values are cut from,
// reused by a connection's requests for the heads of their HTTP/1.1
// tries: such a head is written within its try, and nothing reads it
// after (each retry makes its own). Header.Clone was three allocations
// per request.
type headerScratch struct {
	h    http.Header
	vals []string
}

// clone is src's copy, as Header.Clone makes it, in s.
func (s *headerScratch) clone(src http.Header) http.Header {
	if src == nil {
		return nil
	}
	if s.h == nil || len(s.h) > maxReusedFields {
		s.h = make(http.Header, len(src)+2)
	} else {
		clear(s.h)
	}
	n := 0
	for _, vv := range src {
		n += len(vv)
	}
	if cap(s.vals) < n {
		s.vals = make([]string, n, n+4)
	}
	vals := s.vals[:n]
	for k, vv := range src {
		if vv == nil {
			s.h[k] = nil
			continue
		}
		m := copy(vals, vv)
		s.h[k] = vals[:m:m]
		vals = vals[m:]
	}
	clear(s.vals[n:cap(s.vals)]) // (the strings of a longer head before)
	return s.h
}

type connCtxKey struct{}

func newConnCtx(ctx context.Context) *connCtx {
	c := &connCtx{Context: ctx}
	c.stop = context.AfterFunc(ctx, c.ended)
	return c
}

func (c *connCtx) Value(key any) any {
	if key == (connCtxKey{}) {
		return c
	}
	return c.Context.Value(key)
}

// ended cancels the request in progress: the connection is gone.
func (c *connCtx) ended() {
	c.mu.Lock()
	s := c.cur
	c.mu.Unlock()
	if s != nil {
		s.cancel(c.Context.Err())
	}
}

// begin makes s the request in progress; one the connection already
// ended is cancelled at once.
func (c *connCtx) begin(s *streamTimer) {
	c.mu.Lock()
	c.cur = s
	c.mu.Unlock()
	if err := c.Context.Err(); err != nil {
		s.cancel(err)
	}
}

func (c *connCtx) end(s *streamTimer) {
	c.mu.Lock()
	if c.cur == s {
		c.cur = nil
	}
	c.mu.Unlock()
}

// close ends c's watch of the connection's context.
func (c *connCtx) close() { c.stop() }
