// Package netns creates, enters and removes named Linux network namespaces,
// the same ones `ip netns` manages under /run/netns, and opens sockets and
// starts processes inside them.
//
// All code in Ambit that switches network namespaces goes through this
// package: a namespace switch applies to one OS thread, and getting the
// thread locking wrong silently runs code in the wrong namespace.
package netns

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"
)

// Dir is where named namespaces are bind-mounted, as by `ip netns add`.
const Dir = "/run/netns"

// NS is a named network namespace.
type NS struct {
	name string
}

// Create makes a new named network namespace. It fails if one with that name
// exists already.
func Create(name string) (*NS, error) {
	if err := validName(name); err != nil {
		return nil, err
	}
	if _, err := os.Stat(filepath.Join(Dir, name)); err == nil {
		return nil, fmt.Errorf("create netns %s: %w", name, os.ErrExist)
	}
	err := onLockedThread(func() error {
		orig, err := vnetns.Get()
		if err != nil {
			return fmt.Errorf("get current netns: %w", err)
		}
		defer orig.Close()
		created, err := vnetns.NewNamed(name)
		if err != nil {
			return fmt.Errorf("create netns %s: %w", name, err)
		}
		created.Close()
		if err := vnetns.Set(orig); err != nil {
			return errThreadTainted{fmt.Errorf("return from netns %s: %w", name, err)}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return &NS{name: name}, nil
}

// Open returns the existing namespace called name.
func Open(name string) (*NS, error) {
	if err := validName(name); err != nil {
		return nil, err
	}
	if _, err := os.Stat(filepath.Join(Dir, name)); err != nil {
		return nil, fmt.Errorf("open netns %s: %w", name, err)
	}
	return &NS{name: name}, nil
}

// List returns the names of all named network namespaces that start with
// prefix.
func List(prefix string) ([]string, error) {
	entries, err := os.ReadDir(Dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list netns: %w", err)
	}
	var names []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), prefix) {
			names = append(names, e.Name())
		}
	}
	return names, nil
}

// Delete removes the named namespace. Deleting one that does not exist is
// not an error. The namespace itself lives on while a process or an open
// file still refers to it.
func Delete(name string) error {
	if err := validName(name); err != nil {
		return err
	}
	if _, err := os.Stat(filepath.Join(Dir, name)); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err := vnetns.DeleteNamed(name); err != nil {
		return fmt.Errorf("delete netns %s: %w", name, err)
	}
	// iproute2 keeps per-namespace files under /etc/netns/<name>.
	if err := os.RemoveAll(filepath.Join("/etc/netns", name)); err != nil {
		return fmt.Errorf("delete netns %s: %w", name, err)
	}
	return nil
}

// Name is the namespace's name.
func (n *NS) Name() string { return n.name }

// Path is the namespace's bind mount, usable as a CNI netns path.
func (n *NS) Path() string { return filepath.Join(Dir, n.name) }

// Delete removes the namespace; see Delete.
func (n *NS) Delete() error { return Delete(n.name) }

// Do runs fn on an OS thread that is inside the namespace. Goroutines that
// fn starts run elsewhere, in the process's own namespace; sockets that fn
// creates stay in this one.
func (n *NS) Do(fn func() error) error {
	return onLockedThread(func() error {
		orig, err := vnetns.Get()
		if err != nil {
			return fmt.Errorf("get current netns: %w", err)
		}
		defer orig.Close()
		target, err := vnetns.GetFromName(n.name)
		if err != nil {
			return fmt.Errorf("open netns %s: %w", n.name, err)
		}
		defer target.Close()
		if err := vnetns.Set(target); err != nil {
			return fmt.Errorf("enter netns %s: %w", n.name, err)
		}
		fnErr := fn()
		if err := vnetns.Set(orig); err != nil {
			return errThreadTainted{fmt.Errorf("return from netns %s: %w", n.name, err)}
		}
		return fnErr
	})
}

// Listen opens a listening socket inside the namespace.
func (n *NS) Listen(ctx context.Context, network, address string) (net.Listener, error) {
	return n.ListenWith(ctx, &net.ListenConfig{}, network, address)
}

// ErrNotIP is returned by DialContext for an address whose host is a name.
var ErrNotIP = errors.New("host is not an IP address: names must be resolved inside the namespace (run a process there)")

// DialContext connects from inside the namespace. The socket is created in
// the namespace; the connection attempt itself may run on any thread. The
// address must be an IP literal: Go's resolver would send its queries from
// other threads, in the host's namespace, to the host's resolver.
func (n *NS) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	host, _, err := net.SplitHostPort(address)
	if err != nil {
		return nil, fmt.Errorf("dial %s %s from netns %s: %w", network, address, n.name, err)
	}
	if _, err := netip.ParseAddr(host); err != nil {
		return nil, fmt.Errorf("dial %s %s from netns %s: %w", network, address, n.name, ErrNotIP)
	}
	var c net.Conn
	err = n.Do(func() error {
		var err error
		c, err = (&net.Dialer{}).DialContext(ctx, network, address)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("dial %s %s from netns %s: %w", network, address, n.name, err)
	}
	return c, nil
}

// Command prepares a process that runs inside the namespace, through
// `ip netns exec`, so that it also sees the namespace's files under
// /etc/netns/<name> (resolv.conf, hosts) in place of the host's.
func (n *NS) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", n.name, name}, args...)...)
}

// SetEtcFile writes a file that processes started with Command see at
// /etc/<name> instead of the host's file.
func (n *NS) SetEtcFile(name string, data []byte) error {
	dir := filepath.Join("/etc/netns", n.name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("write /etc/%s for netns %s: %w", name, n.name, err)
	}
	if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
		return fmt.Errorf("write /etc/%s for netns %s: %w", name, n.name, err)
	}
	return nil
}

// errThreadTainted marks an error after which the locked thread is left in
// a foreign namespace and must not return to the scheduler's pool.
type errThreadTainted struct{ error }

func (e errThreadTainted) Unwrap() error { return e.error }

// onLockedThread runs fn with the goroutine locked to its thread. If fn
// leaves the thread in another namespace, the thread stays locked and the
// runtime terminates it when the goroutine exits.
func onLockedThread(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		err := fn()
		var tainted errThreadTainted
		if !errors.As(err, &tainted) {
			runtime.UnlockOSThread()
		}
		errc <- err
	}()
	return <-errc
}

func validName(name string) error {
	if name == "" || name == "." || name == ".." || strings.ContainsAny(name, "/\x00") {
		return fmt.Errorf("netns name %q: want a plain file name", name)
	}
	return nil
}

// Netlink returns a netlink handle whose requests act inside ns. The caller
// closes it.
func Netlink(ns *NS) (*netlink.Handle, error) {
	h, err := vnetns.GetFromPath(ns.Path())
	if err != nil {
		return nil, fmt.Errorf("open netns %s: %w", ns.name, err)
	}
	defer h.Close()
	nh, err := netlink.NewHandleAt(h)
	if err != nil {
		return nil, fmt.Errorf("netlink handle in netns %s: %w", ns.name, err)
	}
	return nh, nil
}

// Fd opens the namespace's file, as netlink wants it to move links into
// the namespace. The caller closes it.
func Fd(ns *NS) (*os.File, error) {
	f, err := os.Open(ns.Path())
	if err != nil {
		return nil, fmt.Errorf("open netns %s: %w", ns.name, err)
	}
	return f, nil
}

// ListenWith opens a listening socket inside the namespace with the given
// ListenConfig (socket options through its Control function).
func (n *NS) ListenWith(ctx context.Context, lc *net.ListenConfig, network, address string) (net.Listener, error) {
	var l net.Listener
	err := n.Do(func() error {
		var err error
		l, err = lc.Listen(ctx, network, address)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("listen %s %s in netns %s: %w", network, address, n.name, err)
	}
	return l, nil
}
