package hbone

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// Copy buffers start small, so that the many idle or chatty connections
// of a node cost little, and grow to bufferSize once a read fills the
// small one, so that bulk streams move in large reads and writes. A loop
// waiting for data on a TCP connection holds no buffer (it takes one
// only for a read that finds data, see readPooled), and a tunnel stream
// needs none (it hands its received frames over itself): a connection
// idle after a burst of traffic keeps no 256 KiB buffers.
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

// copyAdaptive is io.Copy with buffers from the pools above, sized as
// they explain. It does not use ReaderFrom, nor a TCPConn's WriterTo:
// they fall back to io.Copy's 32 KiB buffer.
func copyAdaptive(dst io.Writer, src io.Reader) (int64, error) {
	// A tunnel stream hands its data over itself (stream.WriteTo).
	if wt, ok := src.(io.WriterTo); ok {
		if _, tcp := src.(*net.TCPConn); !tcp {
			return wt.WriteTo(dst)
		}
	}
	// Only a bare TCP connection: a wrapper could hold read data of its
	// own that the socket does not show.
	var raw syscall.RawConn
	if tc, ok := src.(*net.TCPConn); ok {
		raw, _ = tc.SyscallConn()
	}
	big := false
	var total int64
	for {
		pool := &smallPool
		if big {
			pool = &bigPool
		}
		var bp *[]byte
		var nr int
		var rerr error
		if raw != nil {
			bp, nr, rerr = readPooled(raw, pool)
		} else {
			bp = pool.Get().(*[]byte)
			nr, rerr = src.Read(*bp)
		}
		var werr error
		if nr > 0 {
			var nw int
			nw, werr = dst.Write((*bp)[:nr])
			total += int64(nw)
			if werr == nil && nw != nr {
				werr = io.ErrShortWrite
			}
		}
		if bp != nil {
			big = nr == len(*bp)
			pool.Put(bp)
		}
		if werr != nil {
			return total, werr
		}
		if rerr != nil {
			if rerr == io.EOF {
				return total, nil
			}
			return total, rerr
		}
	}
}

// readPooled reads a socket into a buffer from pool that it takes only
// once there is something to read: an attempt that finds the socket empty
// gives the buffer back before waiting on Go's poller, so a copy loop
// waiting on an idle connection holds none. It returns io.EOF at the end
// of the stream; the buffer is nil only with an error.
func readPooled(rc syscall.RawConn, pool *sync.Pool) (*[]byte, int, error) {
	var (
		bp  *[]byte
		n   int
		err error
	)
	cerr := rc.Read(func(fd uintptr) bool {
		bp = pool.Get().(*[]byte)
		for {
			n, err = unix.Read(int(fd), *bp)
			if err != unix.EINTR {
				break
			}
		}
		if err == unix.EAGAIN {
			pool.Put(bp)
			bp = nil
			return false // wait until readable, then try again
		}
		return true
	})
	switch {
	case cerr != nil:
		return bp, 0, cerr
	case err != nil:
		return bp, 0, os.NewSyscallError("read", err)
	case n == 0:
		return bp, 0, io.EOF
	}
	return bp, n, nil
}

func isClosed(err error) bool {
	return errors.Is(err, net.ErrClosed) || errors.Is(err, io.ErrClosedPipe) || errors.Is(err, io.EOF)
}
