package server_test

import (
	"context"
	"testing"

	"github.com/ambitmesh/ambit/istiod/server"
)

// runServer runs s until the test ends, then stops it (cancel ends ctx)
// and checks that it stopped cleanly.
func runServer(t *testing.T, ctx context.Context, cancel context.CancelFunc, s *server.Server) {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("istiod run: %v", err)
		}
	})
}
