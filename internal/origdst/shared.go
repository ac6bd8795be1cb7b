package origdst

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// ListenOptions say how Listen opens a listener.
type ListenOptions struct {
	// Transparent sets IP_TRANSPARENT (see ListenTransparent).
	Transparent bool
	// Shared sets SO_REUSEPORT, so that another process (the next
	// ztunnel during an upgrade) can listen on the same address while
	// this one still serves, and makes the newest listener of the group
	// take the new connections (NewestTakesOver).
	Shared bool
}

// Listen listens on addr with o.
func Listen(ctx context.Context, addr string, o ListenOptions) (net.Listener, error) {
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		if err := c.Control(func(fd uintptr) {
			if o.Transparent {
				if err := unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_TRANSPARENT, 1); err != nil {
					serr = fmt.Errorf("set IP_TRANSPARENT: %w", err)
					return
				}
			}
			if o.Shared {
				if err := unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1); err != nil {
					serr = fmt.Errorf("set SO_REUSEPORT: %w", err)
				}
			}
		}); err != nil {
			return err
		}
		return serr
	}}
	if o.Shared {
		// Plain TCP: Go listens with MPTCP by default where the kernel
		// has it, and MPTCP sockets take no SO_REUSEPORT group program.
		lc.SetMultipathTCP(false)
	}
	l, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", addr, err)
	}
	if o.Shared {
		if err := NewestTakesOver(l); err != nil {
			l.Close()
			return nil, fmt.Errorf("listen on %s: %w", addr, err)
		}
	}
	return l, nil
}

// newestProgram is a classic BPF program for a SO_REUSEPORT group: it
// returns index 1, the listener that joined after the first. The kernel
// keeps a group's listeners in the order they joined (one that leaves
// is replaced by the last), and an index past the end falls back to its
// usual hash. So with one listener nothing changes; while a second
// process listens beside the first (the next ztunnel during an upgrade,
// which opens its listeners only once it is ready), every new connection
// goes to the second, the first gets none and can close its listener
// without dropping connections queued on it; once it has, the second is
// alone again.
var newestProgram = []unix.SockFilter{{Code: unix.BPF_RET | unix.BPF_K, K: 1}}

// NewestTakesOver attaches the group program (newestProgram) to ln's
// SO_REUSEPORT group; every member attaches the same one, and the
// kernel keeps one per group.
func NewestTakesOver(ln net.Listener) error {
	sc, ok := ln.(syscall.Conn)
	if !ok {
		return fmt.Errorf("attach reuseport program: %T has no socket", ln)
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return fmt.Errorf("attach reuseport program: %w", err)
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		prog := unix.SockFprog{Len: uint16(len(newestProgram)), Filter: &newestProgram[0]}
		serr = unix.SetsockoptSockFprog(int(fd), unix.SOL_SOCKET, unix.SO_ATTACH_REUSEPORT_CBPF, &prog)
	}); err != nil {
		return fmt.Errorf("attach reuseport program: %w", err)
	}
	if serr != nil {
		return fmt.Errorf("attach reuseport program: %w", serr)
	}
	return nil
}

// AssignsReusePort reports whether this kernel delivers connections
// that Ambit's eBPF redirection hands to a listener (bpf_sk_assign) when
// the listener is in a SO_REUSEPORT group: Linux 6.5 and later (earlier
// kernels refuse such a socket, and the redirection would fail closed).
func AssignsReusePort() bool {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return false
	}
	return kernelAtLeast(unix.ByteSliceToString(u.Release[:]), 6, 5)
}

// kernelAtLeast compares a kernel release ("6.18.0-1-amd64") with
// major.minor.
func kernelAtLeast(release string, major, minor int) bool {
	parts := strings.SplitN(release, ".", 3)
	if len(parts) < 2 {
		return false
	}
	maj, err := strconv.Atoi(parts[0])
	if err != nil {
		return false
	}
	end := strings.IndexFunc(parts[1], func(r rune) bool { return r < '0' || r > '9' })
	if end < 0 {
		end = len(parts[1])
	}
	mnr, err := strconv.Atoi(parts[1][:end])
	if err != nil {
		return false
	}
	return maj > major || maj == major && mnr >= minor
}
