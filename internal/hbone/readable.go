package hbone

import (
	"errors"
	"syscall"

	"golang.org/x/sys/unix"
)

// waitReadable blocks until the socket behind rc has data to read, has
// reached EOF or has failed, without a read buffer: a copy loop can wait
// for an idle TCP connection without holding one. It asks with a
// non-blocking one-byte MSG_PEEK and waits on Go's poller when nothing is
// there; the byte stays for the Read that follows.
func waitReadable(rc syscall.RawConn) error {
	return rc.Read(func(fd uintptr) bool {
		var b [1]byte
		_, _, err := unix.Recvfrom(int(fd), b[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
		// Anything but "nothing yet" (data, EOF, an error) is for the Read.
		return !errors.Is(err, unix.EAGAIN) && !errors.Is(err, unix.EINTR)
	})
}
