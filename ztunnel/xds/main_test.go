package xds

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package if a test leaves goroutines behind: every
// client, stream and server a test starts must end with it.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
