// Package origdst reads the original destination of a TCP connection that
// netfilter or eBPF redirected to a local proxy port (SO_ORIGINAL_DST). It
// is the only place the node tunnel touches that socket option.
package origdst

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"

	"golang.org/x/sys/unix"
)

// soOriginalDst is SO_ORIGINAL_DST (linux/netfilter_ipv4.h) and
// IP6T_SO_ORIGINAL_DST (linux/netfilter_ipv6/ip6_tables.h).
const soOriginalDst = 80

// ErrNotRedirected is returned for a connection with no recorded original
// destination.
var ErrNotRedirected = errors.New("connection was not redirected")

// Get returns the original destination of c, which must be a TCP
// connection.
func Get(c net.Conn) (netip.AddrPort, error) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return netip.AddrPort{}, fmt.Errorf("read original destination: %T is not a socket", c)
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("read original destination: %w", err)
	}
	local, _ := netip.ParseAddrPort(c.LocalAddr().String())
	var ap netip.AddrPort
	var serr error
	err = rc.Control(func(fd uintptr) {
		if local.Addr().Is4() || local.Addr().Is4In6() {
			// sockaddr_in: family, port (big endian), address.
			m, e := unix.GetsockoptIPv6Mreq(int(fd), unix.SOL_IP, soOriginalDst)
			if e != nil {
				serr = e
				return
			}
			b := m.Multiaddr
			ap = netip.AddrPortFrom(netip.AddrFrom4([4]byte(b[4:8])), binary.BigEndian.Uint16(b[2:4]))
			return
		}
		// sockaddr_in6: family, port, flowinfo, address, scope id.
		m, e := unix.GetsockoptIPv6MTUInfo(int(fd), unix.SOL_IPV6, soOriginalDst)
		if e != nil {
			serr = e
			return
		}
		port := binary.BigEndian.Uint16(portBytes(&m.Addr)[:])
		ap = netip.AddrPortFrom(netip.AddrFrom16(m.Addr.Addr), port)
	})
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("read original destination: %w", err)
	}
	if serr != nil {
		if errors.Is(serr, unix.ENOENT) {
			return netip.AddrPort{}, fmt.Errorf("read original destination: %w", ErrNotRedirected)
		}
		return netip.AddrPort{}, fmt.Errorf("read original destination: %w", serr)
	}
	return ap, nil
}

// portBytes returns the port field of a RawSockaddrInet6 as the
// kernel wrote it, in network byte order.
func portBytes(sa *unix.RawSockaddrInet6) *[2]byte {
	var b [2]byte
	binary.NativeEndian.PutUint16(b[:], sa.Port)
	return &b
}
