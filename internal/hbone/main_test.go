package hbone

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package if a test leaves goroutines behind: every
// connection a test opens, hostile or not, must end with it, and every
// server must stop.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
