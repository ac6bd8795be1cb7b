package netns

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"testing"

	"github.com/ambitmesh/ambit/internal/testutil"
)

func testName(t *testing.T) string {
	return fmt.Sprintf("ambit-test-%d", os.Getpid())
}

func TestCreateDoListenDelete(t *testing.T) {
	testutil.RequireRoot(t)
	name := testName(t)
	ns, err := Create(name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ns.Delete() })

	if _, err := Create(name); err == nil {
		t.Fatalf("Create(%q) twice: got nil error, want exists", name)
	}
	names, err := List("ambit-test-")
	if err != nil {
		t.Fatal(err)
	}
	if !contains(names, name) {
		t.Fatalf("List: got %v, want it to contain %q", names, name)
	}

	// Loopback in a new namespace is down: a listener there proves the
	// socket really is inside it only once lo is up and it answers.
	if err := ns.Do(func() error {
		return run(t, "ip", "link", "set", "lo", "up")
	}); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	l, err := ns.Listen(ctx, "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		_, _ = io.WriteString(c, "inside")
		c.Close()
	}()

	// From the host namespace the port is not there.
	if c, err := net.Dial("tcp", l.Addr().String()); err == nil {
		c.Close()
		t.Fatalf("dial %s from host netns: got a connection, want refused", l.Addr())
	}
	c, err := ns.DialContext(ctx, "tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(c)
	c.Close()
	if string(got) != "inside" {
		t.Fatalf("read from listener in netns: got %q, want %q", got, "inside")
	}

	// A name would be resolved outside the namespace: refused.
	if c, err := ns.DialContext(ctx, "tcp", "localhost:1"); !errors.Is(err, ErrNotIP) {
		if c != nil {
			c.Close()
		}
		t.Errorf("dial a name from the netns: got %v, want ErrNotIP", err)
	}

	if err := ns.Delete(); err != nil {
		t.Fatal(err)
	}
	if err := ns.Delete(); err != nil {
		t.Fatalf("second Delete: got %v, want nil (idempotent)", err)
	}
	if _, err := Open(name); err == nil {
		t.Fatalf("Open after Delete: got nil error, want not exist")
	}
}

func TestInvalidName(t *testing.T) {
	for _, name := range []string{"", "..", "a/b"} {
		if _, err := Open(name); err == nil {
			t.Errorf("Open(%q): got nil error, want invalid name", name)
		}
	}
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

func run(t *testing.T, name string, args ...string) error {
	t.Helper()
	// Runs in the calling thread's netns: the child inherits it.
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %v: %w: %s", name, args, err, out)
	}
	return nil
}
