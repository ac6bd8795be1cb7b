package waypoint

import (
	"context"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/ambitmesh/ambit/waypoint/config"
)

// TestReplayBody: a second try reads the whole body again, part kept
// and part still arriving; past the limit nothing is replayable and a
// try behind gets errBodyNotKept; ending tries never waits for a client
// read in progress.
func TestReplayBody(t *testing.T) {
	pr, pw := io.Pipe()
	b := newReplayBody(nil, pr, 10, nil)
	first := b.reader()
	go pw.Write([]byte("hello "))
	buf := make([]byte, 64)
	n, err := first.Read(buf)
	if err != nil || string(buf[:n]) != "hello " {
		t.Fatalf("first try: got %q, %v", buf[:n], err)
	}
	// first is blocked in a read of the client now: closing tries and
	// asking for replayability must not wait for it.
	readDone := make(chan struct{})
	go func() {
		first.Read(buf)
		close(readDone)
	}()
	b.closeReaders()
	if !b.replayable() {
		t.Fatal("replayable: got false within the limit")
	}
	second := b.reader()
	go func() {
		pw.Write([]byte("you"))
		pw.Close()
	}()
	<-readDone // the first try's pending read took "you" into the kept bytes
	got, err := io.ReadAll(second)
	if err != nil || string(got) != "hello you" {
		t.Fatalf("second try: got %q, %v; want the whole body", got, err)
	}

	over := newReplayBody(nil, io.NopCloser(strings.NewReader(strings.Repeat("x", 30))), 10, nil)
	r1 := over.reader()
	if n, err := io.Copy(io.Discard, r1); n != 30 || err != nil {
		t.Fatalf("streaming past the limit: got %d, %v", n, err)
	}
	if over.replayable() {
		t.Error("replayable past the limit: got true")
	}
	if _, err := over.reader().Read(buf); !errors.Is(err, errBodyNotKept) {
		t.Errorf("a try behind past the limit: got %v, want errBodyNotKept", err)
	}
}

// TestBackoff: Envoy's jittered exponential back-off waits at most
// base×2^n, capped at max_interval, and stops when the request ends.
func TestBackoff(t *testing.T) {
	r := &config.RetryPolicy{BaseBackoff: time.Millisecond, MaxBackoff: 4 * time.Millisecond}
	for _, tc := range []struct {
		try  int
		want time.Duration
	}{{0, time.Millisecond}, {1, 2 * time.Millisecond}, {2, 4 * time.Millisecond}, {9, 4 * time.Millisecond}} {
		for range 50 {
			if d := backoffDelay(r, tc.try); d <= 0 || d > tc.want {
				t.Fatalf("try %d: got %v, want in (0, %v]", tc.try, d, tc.want)
			}
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if backoff(ctx, &config.RetryPolicy{BaseBackoff: time.Hour, MaxBackoff: time.Hour}, 0) {
		t.Error("back-off of an ended request: got true, want false")
	}
}

// TestGRPCTimeout: grpc-timeout values as gRPC's protocol writes them;
// anything else is not a timeout.
func TestGRPCTimeout(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want time.Duration
		ok   bool
	}{
		{"100m", 100 * time.Millisecond, true}, {"2S", 2 * time.Second, true}, {"1H", time.Hour, true},
		{"5u", 5 * time.Microsecond, true}, {"99999999n", 99999999, true},
		{"", 0, false}, {"m", 0, false}, {"10x", 0, false}, {"-1S", 0, false}, {"123456789S", 0, false},
	} {
		got, ok := grpcTimeout(tc.in)
		if got != tc.want || ok != tc.ok {
			t.Errorf("grpcTimeout(%q): got %v, %v; want %v, %v", tc.in, got, ok, tc.want, tc.ok)
		}
	}
}

// TestReplayBodyBuffered: a body already whole in the connection's
// buffer is read at once, each try gets it in memory (a body net/http
// sends with the request's head), mirrors get it at once; one over the
// limit is left to stream.
func TestReplayBodyBuffered(t *testing.T) {
	b := newReplayBody(nil, &bufferedBody{ReadCloser: io.NopCloser(strings.NewReader("hello")), n: 5}, 10, nil)
	for try := range 2 {
		r := b.reader()
		if _, ok := r.(*replayReader); ok {
			t.Fatalf("try %d: got a replayReader, want the body in memory", try)
		}
		got, err := io.ReadAll(r)
		if err != nil || string(got) != "hello" {
			t.Errorf("try %d: got %q, %v, want %q", try, got, err, "hello")
		}
	}
	var mirrored string
	b.whenComplete(func(body []byte) { mirrored = string(body) })
	if mirrored != "hello" {
		t.Errorf("mirror: got %q, want %q at once", mirrored, "hello")
	}
	big := newReplayBody(nil, &bufferedBody{ReadCloser: io.NopCloser(strings.NewReader("0123456789ab")), n: 12}, 10, nil)
	if _, ok := big.reader().(*replayReader); !ok {
		t.Errorf("body over the limit: got it in memory, want it streamed through a replayReader")
	}
}

// TestReplayBodyRelease: release gives a buffered body's buffer back
// to its pool only when nothing can read it after the request: not
// while the body is still being read, not once a mirror was handed the
// bytes; reads after it find the body's end.
func TestReplayBodyRelease(t *testing.T) {
	body := strings.Repeat("b", 1500)
	buffered := func() *replayBody {
		return newReplayBody(nil, &bufferedBody{ReadCloser: io.NopCloser(strings.NewReader(body)), n: int64(len(body))}, 4096, nil)
	}

	b := buffered()
	if b.pooled == nil {
		t.Fatal("a buffered body: got no pooled buffer")
	}
	if got, err := io.ReadAll(b.reader()); err != nil || string(got) != body {
		t.Fatalf("try: got %d bytes, %v, want the %d of the body", len(got), err, len(body))
	}
	b.release()
	if b.pooled != nil || b.kept != nil {
		t.Errorf("after release: the body still holds its buffer")
	}
	if n, err := b.Read(make([]byte, 10)); n != 0 || err != io.EOF {
		t.Errorf("read after release: got %d, %v, want 0, EOF", n, err)
	}

	// A mirror's bytes outlive the request: never reused under it.
	m := buffered()
	var mirrored []byte
	m.whenComplete(func(b []byte) { mirrored = b })
	m.release()
	if m.pooled == nil {
		t.Errorf("a mirrored body: release gave its buffer back")
	}
	for range 10 {
		p := keptBufs.Get(len(body) + 1)
		for i := range *p {
			(*p)[i] = 'x'
		}
	}
	if string(mirrored) != body {
		t.Errorf("mirrored bytes after release: changed, want the body")
	}
}
