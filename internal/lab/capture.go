package lab

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Capture records the TCP packets crossing one of the lab's links (a
// node's veth to the bridge), with tcpdump in the bridge's namespace.
type Capture struct {
	path string
	proc *Process
}

// StartCapture starts capturing on link and returns once tcpdump listens.
func (l *Lab) StartCapture(ctx context.Context, link string) (*Capture, error) {
	b := make([]byte, 4)
	rand.Read(b)
	c := &Capture{path: filepath.Join(l.Dir, link+"-"+hex.EncodeToString(b)+".pcap")}
	var err error
	c.proc, err = l.StartProcessIn(l.BridgeNS(), "tcpdump-"+link, nil, "tcpdump", "--immediate-mode", "-i", link, "-U", "-n", "-w", c.path, "tcp")
	if err != nil {
		return nil, fmt.Errorf("capture on %s: %w", link, err)
	}
	if err := PollUntil(ctx, 30*time.Second, func() bool { return strings.Contains(c.proc.Logs(5), "listening on") }); err != nil {
		c.proc.Stop(5 * time.Second)
		return nil, fmt.Errorf("capture on %s: tcpdump did not start: %w\n%s", link, err, c.proc.Logs(5))
	}
	return c, nil
}

// Until waits until marker has been captured (packets are written in
// order, so everything sent before it is in the file too), stops the
// capture and returns what it holds.
func (c *Capture) Until(ctx context.Context, marker string) ([]byte, error) {
	defer c.proc.Stop(5 * time.Second)
	var wire []byte
	if err := PollUntil(ctx, 30*time.Second, func() bool {
		wire, _ = os.ReadFile(c.path)
		return strings.Contains(string(wire), marker)
	}); err != nil {
		return wire, fmt.Errorf("capture %s: no %q in %d bytes: %w", c.path, marker, len(wire), err)
	}
	return wire, nil
}

// NoneInClear waits until control has been captured, stops the capture,
// and fails if secret crossed the link in clear text.
func (c *Capture) NoneInClear(ctx context.Context, control, secret string) error {
	wire, err := c.Until(ctx, control)
	if err != nil {
		return fmt.Errorf("%w: the capture does not see the traffic", err)
	}
	if strings.Contains(string(wire), secret) {
		return fmt.Errorf("capture %s: found %q: it crossed the link in clear text", c.path, secret)
	}
	return nil
}
