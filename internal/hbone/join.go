package hbone

import (
	"errors"
	"io"
	"net"
	"sync"
)

// Copy buffers start small, so that the many idle or chatty connections
// of a node cost little, and grow to bufferSize once a read fills the
// small one, so that bulk streams move in large reads and writes.
const smallBufferSize = 16 << 10

var (
	smallPool = sync.Pool{New: func() any { b := make([]byte, smallBufferSize); return &b }}
	bigPool   = sync.Pool{New: func() any { b := make([]byte, bufferSize); return &b }}
)

// closeWriter is a connection that can end its sending direction alone.
type closeWriter interface{ CloseWrite() error }

// Stats counts what Join moved.
type Stats struct {
	// AToB and BToA are bytes copied from a to b and from b to a.
	AToB, BToA int64
}

// Join copies a to b and b to a until both directions end, then closes
// both. When one direction reaches EOF it half-closes the other side if it
// can (TCP, HBONE client streams) and keeps the other direction going;
// otherwise, or on an error, it closes both at once. It returns the first
// error that is not an orderly end.
func Join(a, b net.Conn) (Stats, error) {
	var (
		st     Stats
		once   sync.Once
		errAB  error
		doneAB = make(chan struct{})
	)
	closeBoth := func() {
		once.Do(func() {
			a.Close()
			b.Close()
		})
	}
	go func() {
		defer close(doneAB)
		st.AToB, errAB = pipe(b, a, closeBoth)
	}()
	var errBA error
	st.BToA, errBA = pipe(a, b, closeBoth)
	<-doneAB
	closeBoth()
	return st, errors.Join(errAB, errBA)
}

// pipe copies src to dst, then half-closes dst or, if it cannot, closes
// both sides.
func pipe(dst, src net.Conn, closeBoth func()) (int64, error) {
	n, err := copyAdaptive(dst, src)
	if err != nil && !isClosed(err) {
		closeBoth()
		return n, err
	}
	if cw, ok := dst.(closeWriter); ok && cw.CloseWrite() == nil {
		return n, nil
	}
	closeBoth()
	return n, nil
}

// copyAdaptive is io.Copy with a buffer that starts small and grows for
// bulk transfers. It does not use ReaderFrom or WriterTo: TCPConn's fall
// back to io.Copy's 32 KiB buffer.
func copyAdaptive(dst io.Writer, src io.Reader) (int64, error) {
	bp := smallPool.Get().(*[]byte)
	pool := &smallPool
	defer func() { pool.Put(bp) }()
	var total int64
	for {
		buf := *bp
		nr, rerr := src.Read(buf)
		if nr > 0 {
			nw, werr := dst.Write(buf[:nr])
			total += int64(nw)
			if werr != nil {
				return total, werr
			}
			if nw != nr {
				return total, io.ErrShortWrite
			}
		}
		if rerr != nil {
			if rerr == io.EOF {
				return total, nil
			}
			return total, rerr
		}
		if nr == len(buf) && pool == &smallPool {
			smallPool.Put(bp)
			bp, pool = bigPool.Get().(*[]byte), &bigPool
		}
	}
}

func isClosed(err error) bool {
	return errors.Is(err, net.ErrClosed) || errors.Is(err, io.ErrClosedPipe) || errors.Is(err, io.EOF)
}
