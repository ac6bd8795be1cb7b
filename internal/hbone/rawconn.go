package hbone

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"unsafe"
)

// A tunnel's TCP connection reads and writes with raw system calls.
//
// Go's net package makes each read and write through syscall.Syscall,
// which hands the goroutine's P to the runtime for the duration of the
// call. The runtime's monitor thread (sysmon) takes a P back from a
// call that has lasted one of its ticks (20 µs) and, with nothing else
// runnable, wakes another thread to hold it; the writer's thread then
// parks when its call returns. A write on a tunnel is mostly the kernel
// delivering the segment to the receiving socket, about 20 µs on
// loopback or a veth pair, so on a proxy pinned to one CPU (GOMAXPROCS
// 1) about one write in two was handed off: two or three futex calls,
// thread switches, and sysmon polling every 20 µs instead of sleeping
// (perf trace of the waypoint at 1,000 req/s: 3.4 futex and 1.5
// nanosleep calls per request, against 1.8 writes).
//
// The sockets are non-blocking (the net package registers them with its
// poller), so a write or read never sleeps in the kernel: it copies what
// it can and returns, EAGAIN when it can copy nothing. rawConn makes that
// call with syscall.RawSyscall, keeping its P, and waits for the socket
// through the connection's RawConn (the poller, deadlines included) only
// on EAGAIN. This is what the Go runtime's own non-blocking calls do
// (for example its pipe writes to wake the poller).
type rawConn struct {
	*net.TCPConn
	rc syscall.RawConn
	// in and out hold each direction's call, their functions made once:
	// a closure per call, passed to RawConn, cost three allocations per
	// read and per write on the tunnel.
	in, out rawCall
}

// rawCall is one direction's system call: p the buffer, n and errno
// what the call left. mu makes concurrent calls of one direction wait
// their turn (the fd's own lock covers only the function).
type rawCall struct {
	mu    sync.Mutex
	p     []byte
	n     int
	errno syscall.Errno
	fn    func(fd uintptr) bool
}

// direct returns c reading and writing with raw system calls if it is a
// TCP connection, else c.
func direct(c net.Conn) net.Conn {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return c
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return c
	}
	r := &rawConn{TCPConn: tc, rc: rc}
	r.in.fn = r.in.read
	r.out.fn = r.out.write
	return r
}

// read is one read(2), false (wait, then again) on EAGAIN.
func (k *rawCall) read(fd uintptr) bool {
	for {
		r, _, e := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(&k.p[0])), uintptr(len(k.p)))
		switch e {
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			return false
		case 0:
			k.n = int(r)
		default:
			k.errno = e
		}
		return true
	}
}

// write writes all of p, false (wait, then on) on EAGAIN.
func (k *rawCall) write(fd uintptr) bool {
	for k.n < len(k.p) {
		r, _, e := syscall.RawSyscall(syscall.SYS_WRITE, fd, uintptr(unsafe.Pointer(&k.p[k.n])), uintptr(len(k.p)-k.n))
		switch e {
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			return false
		case 0:
			k.n += int(r)
		default:
			k.errno = e
			return true
		}
	}
	return true
}

func (c *rawConn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	k := &c.in
	k.mu.Lock()
	k.p, k.n, k.errno = p, 0, 0
	err := c.rc.Read(k.fn)
	n, errno := k.n, k.errno
	k.p = nil
	k.mu.Unlock()
	switch {
	case err != nil:
		return 0, c.opError("read", err)
	case errno != 0:
		return 0, c.opError("read", os.NewSyscallError("read", errno))
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

func (c *rawConn) Write(p []byte) (int, error) {
	k := &c.out
	k.mu.Lock()
	k.p, k.n, k.errno = p, 0, 0
	err := c.rc.Write(k.fn)
	n, errno := k.n, k.errno
	k.p = nil
	k.mu.Unlock()
	switch {
	case err != nil:
		return n, c.opError("write", err)
	case errno != 0:
		return n, c.opError("write", os.NewSyscallError("write", errno))
	}
	return n, nil
}

// opError is err as the net package reports a failed read or write:
// a *net.OpError naming the operation and both ends (RawConn's own errors
// name "raw-read" and "raw-write").
func (c *rawConn) opError(op string, err error) error {
	var oe *net.OpError
	if errors.As(err, &oe) {
		err = oe.Err
	}
	return &net.OpError{Op: op, Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
}
