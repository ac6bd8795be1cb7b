package xds_test

import (
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/protobuf/proto"

	"github.com/ambitmesh/ambit/istiod/ambient"
	"github.com/ambitmesh/ambit/istiod/xds"
)

// BenchmarkPush: n workloads, 100 wildcard delta clients that ACK every
// response. Each iteration changes one workload; it ends when the last
// client has it. Reports the p50 and p99 of that time and the time of the
// initial full push (all its parts) to all clients.
func BenchmarkPush(b *testing.B) {
	for _, n := range []int{1000, 10000, 50000} {
		b.Run(fmt.Sprintf("resources=%d/clients=100", n), func(b *testing.B) {
			const clients = 100
			s := xds.New(xds.Options{Types: ambient.XDSTypes()})
			res := map[string]proto.Message{}
			for i := range n {
				name := fmt.Sprintf("Kubernetes//Pod/ns%d/p%d", i%20, i)
				res[name] = wl(name, "node0")
			}
			mustUpdate(b, s, res)
			cc := startServer(b, s)
			var wg sync.WaitGroup
			// Runs after the clients' cancels (cleanups run last first).
			stop := make(chan struct{})
			b.Cleanup(func() {
				close(stop)
				wg.Wait()
			})
			got := make(chan time.Time, clients*4)
			start := time.Now()
			initial := make(chan time.Duration, clients)
			errc := make(chan error, 1)
			for range clients {
				c := dial(b, cc)
				c.send(&discovery.DeltaDiscoveryRequest{TypeUrl: ambient.AddressType})
				wg.Add(1)
				go func() {
					defer wg.Done()
					first := true
					have := 0 // resources of the initial push received
					for {
						resp, err := c.stream.Recv()
						if err != nil {
							select {
							case errc <- err:
							default:
							}
							return
						}
						if first {
							// The initial push may come in several parts.
							have += len(resp.GetResources())
							if have >= n {
								initial <- time.Since(start)
								first = false
							}
						} else {
							select {
							case got <- time.Now():
							case <-stop:
								return
							}
						}
						if err := c.stream.Send(&discovery.DeltaDiscoveryRequest{TypeUrl: resp.GetTypeUrl(), ResponseNonce: resp.GetNonce()}); err != nil {
							return
						}
					}
				}()
			}
			var full time.Duration
			for range clients {
				select {
				case d := <-initial:
					full = max(full, d)
				case err := <-errc:
					b.Fatalf("initial push: %v", err)
				}
			}
			var lat []time.Duration
			i := 0
			for b.Loop() {
				name := fmt.Sprintf("Kubernetes//Pod/ns%d/p%d", i%20, i%n)
				res[name] = wl(name, fmt.Sprintf("node%d", i+1))
				i++
				t0 := time.Now()
				mustUpdate(b, s, res)
				var last time.Time
				for range clients {
					select {
					case last = <-got:
					case err := <-errc:
						b.Fatalf("push: %v", err)
					}
				}
				lat = append(lat, last.Sub(t0))
			}
			b.StopTimer()
			slices.Sort(lat)
			b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
			b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
			b.ReportMetric(float64(full.Milliseconds()), "initial-push-ms")
		})
	}
}
