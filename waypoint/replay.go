package waypoint

import (
	"errors"
	"io"
	"sync"

	"github.com/ambitmesh/ambit/internal/bufpool"
)

// replayBody is a request body read once from the client and handed to
// each try: what has been read is kept, up to the route's buffer limit,
// so that a retry starts from the first byte while the client may still
// be sending the rest (Envoy's router buffers for retries the same way,
// and once the buffer limit is passed it streams on without retries).
//
// Concurrency: pullMu serialises reads of the client's body (a read may
// block until the client sends more); mu guards the kept bytes and the
// readers' state and is never held across a read of the client, so
// that ending a try or asking whether the body is replayable never
// waits for the client. A try that ends is closed, so that it stops
// pulling; a read it had in progress still lands in the kept bytes.
// Reads of replayBody itself (the connection manager draining what is
// left after the answer) pull the same way.
type replayBody struct {
	pullMu sync.Mutex
	src    io.ReadCloser

	mu       sync.Mutex
	kept     []byte
	n        int64 // bytes read from src
	limit    int
	overflow bool // kept no longer holds all n bytes
	err      error
	readers  []*replayReader
	// onEOF runs once, with the whole body, when src ends within the
	// limit (mirrors start then).
	onEOF func(body []byte)
	// st's idle timeout counts each read as activity (nil: none).
	st *streamTimer
	// pooled is kept's buffer when it came from keptBufs (release
	// gives it back); shared: whenComplete handed kept to a mirror,
	// which may read it after the request.
	pooled *[]byte
	shared bool
}

// errBodyNotKept: a try needs bytes the buffer no longer holds.
var errBodyNotKept = errors.New("request body larger than the buffer limit: not kept for this try")

// newReplayBody makes b (a new one if nil; unused before) the body of
// src replayed to each try, keeping up to limit bytes; st, if not nil,
// counts its reads as activity.
func newReplayBody(b *replayBody, src io.ReadCloser, limit int, st *streamTimer) *replayBody {
	if b == nil {
		b = new(replayBody)
	}
	b.src, b.limit, b.st = src, limit, st
	if bb, ok := src.(*bufferedBody); ok && bb.n <= int64(limit) {
		// Read now, without waiting: every try then gets the body in
		// memory (reader), which net/http writes with the request's
		// head in one write instead of flushing the head first.
		// One buffer, read into where the kept bytes go (pull's append
		// then copies nothing): +1, room to see the end. Pooled: it was
		// a fifth of the bytes the waypoint allocated per request.
		b.pooled = keptBufs.Get(int(bb.n) + 1)
		p := (*b.pooled)[:bb.n+1]
		b.kept = p[:0]
		for {
			if _, _, err := b.pull(p[len(b.kept):]); err != nil || len(b.kept) == len(p) {
				break
			}
		}
	}
	return b
}

// keptBufs pools the buffers of small request bodies kept for
// retries, by size class (the largest holds a body of holdMax bytes
// and the byte more that shows its end).
var keptBufs = bufpool.New(2<<10, 4<<10, 8<<10, holdMax+1)

// release gives the kept bytes' buffer back to keptBufs, unless a
// mirror was handed them. Only the router calls it, when the request is
// done and no try can still read the bytes: every try's body was written
// within its round trip (HTTP/1.1, a body of at most holdMax bytes).
// Reads after it find the end of the body, or the error the body ended
// with.
func (b *replayBody) release() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.pooled == nil || b.shared || b.err == nil {
		return
	}
	keptBufs.Put(b.pooled)
	b.pooled, b.kept, b.overflow = nil, nil, true
}

// bufferedBody is a request body of n bytes that is already whole in
// the connection's read buffer (serveRequest checks), so that reading it
// never waits for the client.
type bufferedBody struct {
	io.ReadCloser
	n int64
}

// replayable: every byte read so far is kept.
func (b *replayBody) replayable() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return !b.overflow
}

// reader is a new try's body, from the first byte: the kept bytes in
// memory once the whole body has been read.
func (b *replayBody) reader() io.ReadCloser {
	b.mu.Lock()
	if b.err == io.EOF && !b.overflow {
		kept := b.kept
		b.mu.Unlock()
		return &memBody{b: kept}
	}
	r := &replayReader{b: b}
	b.readers = append(b.readers, r)
	b.mu.Unlock()
	return r
}

// closeReaders ends every try's reader.
func (b *replayBody) closeReaders() {
	b.mu.Lock()
	for _, r := range b.readers {
		r.closed = true
	}
	b.mu.Unlock()
}

// pull reads the client's next bytes into p (b.pullMu held, b.mu not)
// and keeps them; at is the offset they start at.
func (b *replayBody) pull(p []byte) (n int, at int64, err error) {
	b.mu.Lock()
	at, err = b.n, b.err
	b.mu.Unlock()
	if err != nil {
		return 0, at, err
	}
	n, err = b.src.Read(p)
	if n > 0 {
		b.st.touch()
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.n += int64(n)
	if n > 0 && !b.overflow {
		if len(b.kept)+n > b.limit {
			b.overflow, b.kept = true, nil
		} else {
			b.kept = append(b.kept, p[:n]...)
		}
	}
	if err != nil {
		b.err = err
		if err == io.EOF && !b.overflow && b.onEOF != nil {
			f := b.onEOF
			b.onEOF = nil
			f(b.kept)
		}
	}
	return n, at, err
}

// ended is the error the client's body ended with (io.EOF: read
// whole), nil while it has not.
func (b *replayBody) ended() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.err
}

// Read drains the client's body (what no try read).
func (b *replayBody) Read(p []byte) (int, error) {
	b.pullMu.Lock()
	defer b.pullMu.Unlock()
	n, _, err := b.pull(p)
	return n, err
}

func (b *replayBody) Close() error { return b.src.Close() }

// whenComplete runs f with the whole body once it has been read, at
// once if it has; never if it is larger than the limit.
func (b *replayBody) whenComplete(f func([]byte)) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.shared = true
	switch {
	case b.overflow:
	case b.err == io.EOF:
		f(b.kept)
	case b.err == nil:
		b.onEOF = f
	}
}

// replayReader is one try's view of the body.
type replayReader struct {
	b      *replayBody
	off    int64
	closed bool // guarded by b.mu
}

func (r *replayReader) Read(p []byte) (int, error) {
	b := r.b
	for {
		b.mu.Lock()
		switch {
		case r.closed:
			b.mu.Unlock()
			return 0, io.ErrClosedPipe
		case r.off < b.n && b.overflow:
			b.mu.Unlock()
			return 0, errBodyNotKept
		case r.off < b.n:
			n := copy(p, b.kept[r.off:])
			r.off += int64(n)
			b.mu.Unlock()
			return n, nil
		case b.err != nil:
			err := b.err
			b.mu.Unlock()
			return 0, err
		}
		b.mu.Unlock()
		b.pullMu.Lock()
		b.mu.Lock()
		behind := r.off < b.n // another reader pulled meanwhile
		b.mu.Unlock()
		if behind {
			b.pullMu.Unlock()
			continue
		}
		n, at, err := b.pull(p)
		b.pullMu.Unlock()
		if at != r.off {
			continue // cannot happen: pulls are serialised and we were level
		}
		b.mu.Lock()
		r.off += int64(n)
		b.mu.Unlock()
		return n, err
	}
}

func (r *replayReader) Close() error {
	r.b.mu.Lock()
	r.closed = true
	r.b.mu.Unlock()
	return nil
}

// touchBody marks activity on each read of a response body.
type touchBody struct {
	io.ReadCloser
	st *streamTimer
}

func (b *touchBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if n > 0 {
		b.st.touch()
	}
	return n, err
}
