package server_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"runtime/metrics"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8sruntime "k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/ambitmesh/ambit/istiod/ambient"
	"github.com/ambitmesh/ambit/istiod/server"
)

// Environment of the client process of BenchmarkPodReady.
const (
	envClientsAddr  = "AMBIT_BENCH_XDS_ADDR"
	envClientsCount = "AMBIT_BENCH_CLIENTS"
	envClientsWant  = "AMBIT_BENCH_RESOURCES"
)

// benchCluster is pods spread over services (50 per namespace, every
// namespace enrolled) and nodes, as a client-go fake clientset would
// serve them.
func benchCluster(pods, services, nodes int) []k8sruntime.Object {
	var objs []k8sruntime.Object
	for i := range services / 50 {
		objs = append(objs, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("ns%d", i),
			Labels: map[string]string{ambient.DataplaneModeLabel: ambient.DataplaneModeAmbient}}})
	}
	for i := range nodes {
		objs = append(objs, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("node%d", i),
			Labels: map[string]string{"topology.kubernetes.io/zone": fmt.Sprintf("z%d", i%3)}}})
	}
	for i := range services {
		objs = append(objs, &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Namespace: fmt.Sprintf("ns%d", i/50), Name: fmt.Sprintf("svc%d", i)},
			Spec: corev1.ServiceSpec{
				Selector:   map[string]string{"app": fmt.Sprintf("svc%d", i)},
				ClusterIP:  fmt.Sprintf("10.96.%d.%d", i/250, i%250+1),
				ClusterIPs: []string{fmt.Sprintf("10.96.%d.%d", i/250, i%250+1)},
				Ports:      []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromString("http")}},
			},
		})
	}
	for i := range pods {
		objs = append(objs, benchPod(i, services, nodes, true))
	}
	return objs
}

func benchPod(i, services, nodes int, ready bool) *corev1.Pod {
	s := i % services
	ip := fmt.Sprintf("10.%d.%d.%d", 100+i/65536, i/256%256, i%256)
	st := corev1.ConditionTrue
	if !ready {
		st = corev1.ConditionFalse
	}
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: fmt.Sprintf("ns%d", s/50), Name: fmt.Sprintf("p%d", i),
			Labels:      map[string]string{"app": fmt.Sprintf("svc%d", s)},
			Annotations: map[string]string{"ambient.istio.io/redirection": "enabled"}},
		Spec: corev1.PodSpec{
			NodeName: fmt.Sprintf("node%d", i%nodes), ServiceAccountName: fmt.Sprintf("sa%d", s),
			Containers: []corev1.Container{{Name: "app", Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}}}},
		},
		Status: corev1.PodStatus{
			Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}},
			Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: st}},
		},
	}
}

// liveHeap is the Go heap in use after a full collection.
func liveHeap() uint64 {
	runtime.GC()
	s := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
	metrics.Read(s)
	return s[0].Value.Uint64()
}

// procStatus reads a "kB" field of /proc/self/status, in bytes.
func procStatus(field string) uint64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			n, _ := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return n << 10
		}
	}
	return 0
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkPodReady is issue 3's benchmark, in one process with no
// apiserver: istiod (server.Server: informers, incremental model,
// debounce, delta xDS on loopback) over a client-go fake clientset, and
// 100 delta clients in a child process (this test binary again, see
// TestMain), so that their memory and CPU are not istiod's. Each
// iteration turns one pod NotReady (not timed) and then Ready again, and
// times from the status update the informer delivers to istiod until the
// last of the 100 clients has received the pod's Workload: the debounce's
// quiet period, the flush and the push. Reported besides: the initial full
// push to the 100 clients, istiod's resident memory and live heap after
// it (the fake apiserver's share, measured before istiod started, given
// apart), and CPU seconds of this process per change.
//
// Run it with -benchtime 300x for stable percentiles (see
// docs/performance.md).
func BenchmarkPodReady(b *testing.B) {
	for _, n := range []int{1000, 10000, 50000} {
		b.Run(fmt.Sprintf("pods=%d/services=1000/clients=100", n), func(b *testing.B) {
			benchPodReady(b, n, 1000, 100)
		})
	}
}

func benchPodReady(b *testing.B, pods, services, clients int) {
	ctx, cancel := context.WithCancel(b.Context())
	defer cancel()
	heap0 := liveHeap()
	kube := fake.NewSimpleClientset(benchCluster(pods, services, clients)...)
	heapFake := liveHeap() - heap0

	s, err := server.New(server.Config{XDSAddr: "127.0.0.1:0"}, kube, nil, nil)
	if err != nil {
		b.Fatal(err)
	}
	done := make(chan error, 1)
	start := time.Now()
	go func() { done <- s.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			b.Errorf("istiod run: %v", err)
		}
	}()
	want := pods + services
	awaitFullPush(b, ctx, s.XDSAddr().String(), want)
	startup := time.Since(start)
	rssStartup := procStatus("VmRSS")
	heapStartup := liveHeap()

	// The clients, in a process of their own.
	cmd := exec.CommandContext(ctx, os.Args[0])
	cmd.Env = append(os.Environ(), envClientsAddr+"="+s.XDSAddr().String(), envClientsCount+"="+strconv.Itoa(clients), envClientsWant+"="+strconv.Itoa(want))
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	var wg sync.WaitGroup
	defer func() {
		cancel()
		cmd.Wait()
		wg.Wait()
	}()
	lines := make(chan []string, 16)
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer close(lines)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if f := strings.Fields(sc.Text()); len(f) == 3 && f[0] == "bench" {
				lines <- f[1:]
			}
		}
		io.Copy(io.Discard, out)
	}()
	next := func() (string, int64) {
		b.Helper()
		select {
		case f, ok := <-lines:
			if !ok {
				b.Fatal("client process ended early")
			}
			v, _ := strconv.ParseInt(f[1], 10, 64)
			return f[0], v
		case <-ctx.Done():
			b.Fatal(ctx.Err())
		}
		return "", 0
	}
	name, initial := next()
	if name != "initial" {
		b.Fatalf("client process: got %q, want the initial push first", name)
	}
	heap := liveHeap()
	rss, hwm := procStatus("VmRSS"), procStatus("VmHWM")

	flip := func(i int, ready bool) int64 {
		b.Helper()
		p := benchPod(i, services, clients, ready)
		t0 := time.Now().UnixNano()
		if _, err := kube.CoreV1().Pods(p.Namespace).UpdateStatus(ctx, p, metav1.UpdateOptions{}); err != nil {
			b.Fatal(err)
		}
		uid := ambient.PodUID("Kubernetes", p.Namespace, p.Name)
		got, t1 := next()
		if got != uid {
			b.Fatalf("client process: got %s, want %s", got, uid)
		}
		return t1 - t0
	}
	var lat []time.Duration
	cpu0 := cpuTime()
	i := 0
	for b.Loop() {
		flip(i%pods, false)
		lat = append(lat, time.Duration(flip(i%pods, true)))
		i++
	}
	cpu := cpuTime() - cpu0
	slices.Sort(lat)
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	b.ReportMetric(ms(lat[len(lat)/2]), "p50-ms")
	b.ReportMetric(ms(lat[len(lat)*99/100]), "p99-ms")
	b.ReportMetric(ms(lat[len(lat)-1]), "max-ms")
	b.ReportMetric(ms(time.Duration(initial)), "initial-push-ms")
	b.ReportMetric(ms(startup), "startup-ms")
	b.ReportMetric(float64(rssStartup>>20), "startup-rss-MiB")
	b.ReportMetric(float64(heapStartup>>20), "startup-heap-MiB")
	b.ReportMetric(float64(rss>>20), "rss-MiB")
	b.ReportMetric(float64(hwm>>20), "hwm-MiB")
	b.ReportMetric(float64(heap>>20), "heap-MiB")
	b.ReportMetric(float64(heapFake>>20), "fake-apiserver-heap-MiB")
	b.ReportMetric(ms(cpu/time.Duration(2*len(lat))), "cpu-ms/change")
}

// awaitFullPush connects one delta client and waits until it holds want
// addresses: istiod has synced and published its first model.
func awaitFullPush(b *testing.B, ctx context.Context, addr string, want int) {
	b.Helper()
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		b.Fatal(err)
	}
	defer cc.Close()
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	st, err := discovery.NewAggregatedDiscoveryServiceClient(cc).DeltaAggregatedResources(sctx)
	if err != nil {
		b.Fatal(err)
	}
	if err := st.Send(&discovery.DeltaDiscoveryRequest{Node: &core.Node{Id: "probe"}, TypeUrl: ambient.AddressType}); err != nil {
		b.Fatal(err)
	}
	have := map[string]bool{}
	for len(have) < want {
		resp, err := st.Recv()
		if err != nil {
			b.Fatalf("first model: %v", err)
		}
		for _, r := range resp.GetResources() {
			have[r.GetName()] = true
		}
		if err := st.Send(&discovery.DeltaDiscoveryRequest{TypeUrl: resp.GetTypeUrl(), ResponseNonce: resp.GetNonce()}); err != nil {
			b.Fatal(err)
		}
	}
}

// TestMain runs the client process of BenchmarkPodReady when this test
// binary is started as one, the tests otherwise.
func TestMain(m *testing.M) {
	if addr := os.Getenv(envClientsAddr); addr != "" {
		if err := benchClients(addr); err != nil {
			fmt.Fprintln(os.Stderr, "bench clients:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	// Istio's generated fake clientset sends no watch-list bookmarks;
	// informers of it sync only with plain list and watch.
	os.Setenv("KUBE_FEATURE_WatchListClient", "false")
	os.Exit(m.Run())
}

// benchClients connects the clients (each on its own connection, as
// ztunnels on separate nodes), prints "bench initial <ns>" once all of
// them hold the full set (the time since they started connecting), then
// for every resource that all of them have received since, "bench <name>
// <unix ns>" with the time the last one got it. It ACKs everything,
// decodes nothing, and runs until istiod closes the streams or the parent
// kills it.
func benchClients(addr string) error {
	n, _ := strconv.Atoi(os.Getenv(envClientsCount))
	want, _ := strconv.Atoi(os.Getenv(envClientsWant))
	start := time.Now()
	var mu sync.Mutex
	initial := 0
	counts := map[string]int{}
	out := bufio.NewWriter(os.Stdout)
	report := func(format string, args ...any) {
		fmt.Fprintf(out, format, args...)
		out.Flush()
	}
	errc := make(chan error, n)
	for range n {
		cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return err
		}
		defer cc.Close()
		st, err := discovery.NewAggregatedDiscoveryServiceClient(cc).DeltaAggregatedResources(context.Background())
		if err != nil {
			return err
		}
		if err := st.Send(&discovery.DeltaDiscoveryRequest{Node: &core.Node{Id: "bench"}, TypeUrl: ambient.AddressType}); err != nil {
			return err
		}
		go func() {
			have := 0
			for {
				resp, err := st.Recv()
				if err != nil {
					errc <- err
					return
				}
				now := time.Now()
				mu.Lock()
				if have < want {
					have += len(resp.GetResources())
					if have >= want {
						if initial++; initial == n {
							report("bench initial %d\n", now.Sub(start).Nanoseconds())
						}
					}
				} else {
					for _, r := range resp.GetResources() {
						if counts[r.GetName()]++; counts[r.GetName()] == n {
							delete(counts, r.GetName())
							report("bench %s %d\n", r.GetName(), now.UnixNano())
						}
					}
				}
				mu.Unlock()
				if err := st.Send(&discovery.DeltaDiscoveryRequest{TypeUrl: resp.GetTypeUrl(), ResponseNonce: resp.GetNonce()}); err != nil {
					errc <- err
					return
				}
			}
		}()
	}
	<-errc
	return nil
}
