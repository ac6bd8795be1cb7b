package origdst

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Transparent returns the original destination of a connection that was
// delivered to a transparent listener (Ambit's eBPF redirection with
// bpf_sk_assign, or TPROXY): the accepted socket's own local address. A
// connection whose local port is one of the tunnel's own ports was made to
// the listener directly, not redirected.
func Transparent(ownPorts ...uint16) func(net.Conn) (netip.AddrPort, error) {
	return func(c net.Conn) (netip.AddrPort, error) {
		local, err := netip.ParseAddrPort(c.LocalAddr().String())
		if err != nil {
			return netip.AddrPort{}, fmt.Errorf("read original destination: %w", err)
		}
		local = netip.AddrPortFrom(local.Addr().Unmap(), local.Port())
		if slices.Contains(ownPorts, local.Port()) {
			return netip.AddrPort{}, fmt.Errorf("read original destination of %s: %w", local, ErrNotRedirected)
		}
		return local, nil
	}
}

// ListenTransparent listens with IP_TRANSPARENT, so the listener accepts
// connections redirected to it whatever their destination address, and may
// bind an address that is not the node's own (a workload's).
func ListenTransparent(ctx context.Context, addr string) (net.Listener, error) {
	return Listen(ctx, addr, ListenOptions{Transparent: true})
}

// MarkControl returns a socket Control function that sets SO_MARK, for a
// dialer whose connections the node's policy routing must treat apart.
func MarkControl(mark uint32) func(network, address string, c syscall.RawConn) error {
	return func(_, _ string, c syscall.RawConn) error {
		var serr error
		if err := c.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, int(mark))
		}); err != nil {
			return err
		}
		if serr != nil {
			return fmt.Errorf("set socket mark %#x: %w", mark, serr)
		}
		return nil
	}
}

// NodeAddr returns an IPv4 address this network namespace owns that is
// not loopback: a source for connections that policy routing delivers
// locally.
func NodeAddr() (netip.Addr, error) {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return netip.Addr{}, fmt.Errorf("list local addresses: %w", err)
	}
	for _, a := range addrs {
		p, err := netip.ParsePrefix(a.String())
		if err != nil {
			continue
		}
		if ip := p.Addr(); ip.Is4() && !ip.IsLoopback() && ip.IsGlobalUnicast() {
			return ip, nil
		}
	}
	return netip.Addr{}, errors.New("no non-loopback IPv4 address in this namespace")
}

// DialFrom connects to dst from src, an address this node need not own:
// a workload's, so that the destination sees its client's own address.
// The socket is transparent (IP_TRANSPARENT, which needs CAP_NET_ADMIN);
// the node's policy routing must deliver the replies to src locally (the
// eBPF redirection marks them: they belong to this socket's flow). Where
// the socket cannot be made transparent it binds src all the same, which
// works for addresses the node owns (loopback in tests).
func DialFrom(ctx context.Context, src netip.Addr, dst netip.AddrPort, timeout time.Duration) (net.Conn, error) {
	d := FromDialer(src, 0)
	d.Timeout = timeout
	c, err := d.DialContext(ctx, "tcp", dst.String())
	if err != nil {
		return nil, fmt.Errorf("dial %s from %s: %w", dst, src, err)
	}
	return c, nil
}

// FromDialer is the dialer of DialFrom, whose sockets also carry mark
// when it is not zero (SO_MARK, for the node's policy routing).
func FromDialer(src netip.Addr, mark uint32) *net.Dialer {
	return &net.Dialer{
		LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(src, 0)),
		Control: func(_, _ string, c syscall.RawConn) error {
			var serr error
			err := c.Control(func(fd uintptr) {
				// Best effort: without it, binding a foreign address
				// fails below with a clear error.
				_ = unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_TRANSPARENT, 1)
				if mark != 0 {
					serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, int(mark))
				}
			})
			if err != nil {
				return err
			}
			if serr != nil {
				return fmt.Errorf("set socket mark %#x: %w", mark, serr)
			}
			return nil
		},
	}
}

// LocalAddrs tells whether an address belongs to this network namespace
// (the node, for ztunnel): loopback, or assigned to one of its
// interfaces. The list of interface addresses is read again when it is
// older than ten seconds, so a lookup costs a map access.
type LocalAddrs struct {
	mu   sync.Mutex
	read time.Time
	set  map[netip.Addr]bool
}

// Contains reports whether a is local.
func (l *LocalAddrs) Contains(a netip.Addr) bool {
	a = a.Unmap()
	if a.IsLoopback() || a.IsUnspecified() {
		return true
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.set == nil || time.Since(l.read) > 10*time.Second {
		set := map[netip.Addr]bool{}
		addrs, err := net.InterfaceAddrs()
		if err != nil && l.set != nil {
			// Keep the last list rather than forget the node's addresses.
			return l.set[a]
		}
		for _, ia := range addrs {
			if p, err := netip.ParsePrefix(ia.String()); err == nil {
				set[p.Addr().Unmap()] = true
			}
		}
		l.set, l.read = set, time.Now()
	}
	return l.set[a]
}
