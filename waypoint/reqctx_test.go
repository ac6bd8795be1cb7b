package waypoint

import (
	"context"
	"errors"
	"net"
	"net/http"
	"reflect"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// TestStreamTimer: each timeout cancels the request's context, and
// fired says which; stop cancels it with no timeout fired.
func TestStreamTimer(t *testing.T) {
	for _, tc := range []struct {
		name        string
		route, idle time.Duration
		want        error
	}{
		{"route", time.Millisecond, 0, errRouteTimeout},
		{"idle", 0, time.Millisecond, errStreamIdle},
		{"idle before route", time.Hour, time.Millisecond, errStreamIdle},
		{"route before idle", time.Millisecond, time.Hour, errRouteTimeout},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, st := newStreamTimer(context.Background(), nil, tc.route, tc.idle)
			defer st.stop()
			<-ctx.Done()
			if got := ctx.Err(); got != context.Canceled {
				t.Errorf("Err: got %v, want %v", got, context.Canceled)
			}
			if got := st.fired(); got != tc.want {
				t.Errorf("fired: got %v, want %v", got, tc.want)
			}
		})
	}
	t.Run("stopped", func(t *testing.T) {
		ctx, st := newStreamTimer(context.Background(), nil, time.Hour, time.Hour)
		st.touch()
		st.stop()
		<-ctx.Done()
		if got := st.fired(); got != nil {
			t.Errorf("fired: got %v, want none", got)
		}
		if got := ctx.Err(); got != context.Canceled {
			t.Errorf("Err: got %v, want %v", got, context.Canceled)
		}
	})
	if got := (*streamTimer)(nil).fired(); got != nil {
		t.Errorf("nil timer fired: got %v, want none", got)
	}
}

// TestStreamTimerParent: the request's context ends with its parent's,
// with the parent's error, both where the parent is a connection's
// connCtx (registered once for the connection) and where something
// that cancels sits between (context.AfterFunc); a request that ends
// leaves the connection's context alone.
func TestStreamTimerParent(t *testing.T) {
	for _, tc := range []struct {
		name string
		wrap func(context.Context) context.Context
		conn bool
	}{
		{"connection's context", func(c context.Context) context.Context { return c }, true},
		{"values between", func(c context.Context) context.Context {
			return context.WithValue(c, dialKey{}, &dialInfo{})
		}, true},
		{"a cancellable context between", func(c context.Context) context.Context {
			c, cancel := context.WithCancel(c)
			t.Cleanup(cancel)
			return c
		}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			parent, cancel := context.WithCancelCause(context.Background())
			cc := newConnCtx(parent)
			defer cc.close()
			ctx, st := newStreamTimer(tc.wrap(cc), nil, time.Hour, 0)
			if got := st.conn != nil; got != tc.conn {
				t.Errorf("registered with the connection: got %v, want %v", got, tc.conn)
			}
			var aborted atomic.Bool
			a := &abortFunc{func() { aborted.Store(true) }}
			if !st.setAbort(a) {
				t.Fatal("setAbort on a live request: got false")
			}
			cancel(errors.New("client gone"))
			<-ctx.Done()
			if got := ctx.Err(); got != context.Canceled {
				t.Errorf("Err: got %v, want the parent's %v", got, context.Canceled)
			}
			if !aborted.Load() {
				t.Errorf("the try's exchange: not ended")
			}
			if st.clearAbort(a) {
				t.Errorf("clearAbort after the cancellation: got true, want false")
			}
			if st.setAbort(a) {
				t.Errorf("setAbort on a cancelled request: got true, want false")
			}
			st.stop()
			if got := st.fired(); got != nil {
				t.Errorf("fired: got %v, want none", got)
			}
		})
	}
	t.Run("request ends first", func(t *testing.T) {
		parent, cancel := context.WithCancel(context.Background())
		defer cancel()
		cc := newConnCtx(parent)
		defer cc.close()
		for range 3 {
			ctx, st := newStreamTimer(cc, nil, 0, time.Hour)
			a := &abortFunc{func() { t.Errorf("a finished request's exchange ended") }}
			st.setAbort(a)
			if !st.clearAbort(a) {
				t.Errorf("clearAbort before any cancellation: got false")
			}
			st.stop()
			<-ctx.Done()
			if cc.cur != nil {
				t.Errorf("the connection still holds a finished request")
			}
		}
		if cc.Err() != nil {
			t.Errorf("the connection's context: got %v, want it live", cc.Err())
		}
	})
	t.Run("connection already ended", func(t *testing.T) {
		parent, cancel := context.WithCancel(context.Background())
		cc := newConnCtx(parent)
		defer cc.close()
		cancel()
		ctx, st := newStreamTimer(cc, nil, 0, time.Hour)
		defer st.stop()
		<-ctx.Done()
	})
}

// TestStreamTimerAfterFunc: a context made from the request's (a try's
// timeout) and context.AfterFunc end with it, through its AfterFunc; a
// stopped one does not run.
func TestStreamTimerAfterFunc(t *testing.T) {
	ctx, st := newStreamTimer(context.Background(), nil, time.Hour, 0)
	try, cancel := context.WithTimeout(ctx, time.Hour)
	defer cancel()
	ran := make(chan struct{})
	context.AfterFunc(ctx, func() { close(ran) })
	stop := st.AfterFunc(func() { t.Errorf("a stopped AfterFunc ran") })
	if !stop() {
		t.Errorf("stop before the cancellation: got false")
	}
	if len(st.afters) != 2 {
		t.Errorf("registered: got %d AfterFuncs, want 2 (the try's context and context.AfterFunc's)", len(st.afters))
	}
	st.stop()
	<-try.Done()
	<-ran
	if got := try.Err(); got != context.Canceled {
		t.Errorf("the try's context: got %v, want %v", got, context.Canceled)
	}
	after := make(chan struct{})
	if st.AfterFunc(func() { close(after) })() {
		t.Errorf("stop of an AfterFunc on a cancelled request: got true")
	}
	<-after
}

// abortFunc is an aborter that runs f (a pointer: an aborter is
// compared).
type abortFunc struct{ f func() }

func (a *abortFunc) abort() { a.f() }

// TestHostWithoutPort: the host of an authority, as net.SplitHostPort
// splits it; the authority itself where it does not.
func TestHostWithoutPort(t *testing.T) {
	for _, in := range []string{
		"reviews", "reviews:9080", "reviews.default.svc.cluster.local:80", "10.0.0.1", "10.0.0.1:80",
		"[::1]:80", "[::1]", "::1", "fe80::1%eth0", "[fe80::1%eth0]:8080", "host:", ":80", "", ":",
		"[a]b:80", "a]:80", "[[::1]]:80", "a:b:c", "[::1]:8[0", "[]:80",
	} {
		checkHostWithoutPort(t, in)
	}
}

func checkHostWithoutPort(t *testing.T, in string) {
	t.Helper()
	want := in
	if h, _, err := net.SplitHostPort(in); err == nil {
		want = h
	}
	if got := hostWithoutPort(in); got != want {
		t.Errorf("%q: got %q, want %q (net.SplitHostPort's)", in, got, want)
	}
}

// FuzzHostWithoutPort: hostWithoutPort agrees with net.SplitHostPort
// on any authority.
func FuzzHostWithoutPort(f *testing.F) {
	for _, s := range []string{"reviews:9080", "[::1]:80", "::1", "a]:80", "[a]b:80"} {
		f.Add(s)
	}
	f.Fuzz(checkHostWithoutPort)
}

// TestHeaderScratch: clone gives what Header.Clone gives, each time,
// into the same map; nothing of a head before shows through.
func TestHeaderScratch(t *testing.T) {
	var s headerScratch
	heads := []http.Header{
		{"A": {"1", "2"}, "B": {"3"}, "Empty": {}, "Nil": nil},
		{"C": {"4"}},
		nil,
		{"A": {"5"}, "D": {"6", "7", "8"}},
	}
	var first http.Header
	for i, src := range heads {
		got := s.clone(src)
		if d := cmp.Diff(src.Clone(), got); d != "" {
			t.Errorf("head %d (-Header.Clone +clone):\n%s", i, d)
		}
		if src == nil {
			continue
		}
		if first == nil {
			first = got
		} else if reflect.ValueOf(got).UnsafePointer() != reflect.ValueOf(first).UnsafePointer() {
			t.Errorf("head %d: a new map, want the scratch's reused", i)
		}
		got.Add("A", "added") // appending to a value must not write into another's
		for k, vv := range src {
			if k != "A" && !slices.Equal(got[k], vv) {
				t.Errorf("head %d: %s after an Add to A: got %q, want %q", i, k, got[k], vv)
			}
		}
	}
}
