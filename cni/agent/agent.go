// Package agent is Ambit's node agent: one per node, in the node's network
// namespace. It chains the CNI plugin into the node's configuration, owns
// the eBPF redirection of the node (bpf/redirect), and keeps it equal to
// the API: pods of the node that are in the ambient mesh are enrolled,
// others are not, whenever labels change and without restarting pods. The
// CNI plugin asks it, over a Unix socket, to enrol a new pod before the pod
// starts.
package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	listersv1 "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"

	"github.com/ambitmesh/ambit/bpf/redirect"
	"github.com/ambitmesh/ambit/cni/install"
	"github.com/ambitmesh/ambit/cni/plugin"
	"github.com/ambitmesh/ambit/internal/enrolment"
	"github.com/ambitmesh/ambit/internal/logkey"
	"github.com/ambitmesh/ambit/internal/version"
)

// Config is the agent's configuration.
type Config struct {
	NodeName string
	// Client talks to the apiserver. PluginKubeconfig gives the
	// kubeconfig written for the plugin (PluginKubeconfigFile,
	// InClusterPluginKubeconfig); it is asked again every
	// PluginKubeconfigEvery and the file rewritten when it changed.
	Client           kubernetes.Interface
	PluginKubeconfig func() ([]byte, error)
	// CNIConfDir and CNIBinDir are the node's CNI directories; PluginBinary
	// is the plugin to install into CNIBinDir.
	CNIConfDir   string
	CNIBinDir    string
	PluginBinary string
	// PinDir is the bpffs directory of the node's redirection.
	PinDir string
	// Socket is the Unix socket the plugin calls.
	Socket string
	// Uplink is the node's interface to other nodes; empty finds it
	// (redirect.FindUplink) from HostIP, the node's address.
	Uplink string
	HostIP netip.Addr
	// MonitorAddr serves /readyz and /metrics.
	MonitorAddr string
	// DaemonSet is the agent's own DaemonSet, when it runs as one. The
	// agent watches it and, when it stops after seeing it deleted or
	// marked for deletion (helm uninstall), takes Ambit out of the node
	// (Uninstall). Any other stop, an ordinary restart, an upgrade, or a
	// DaemonSet the agent never saw, leaves everything in place: pods
	// that start meanwhile wait for the agent rather than start outside
	// the mesh. Empty: never uninstall on stop.
	DaemonSet types.NamespacedName
	Log       *slog.Logger
}

// Agent is a running node agent.
type Agent struct {
	cfg   Config
	log   *slog.Logger
	redir *redirect.Redirector
	pods  listersv1.PodLister
	nss   listersv1.NamespaceLister
	queue workqueue.TypedRateLimitingInterface[string]
	mu    sync.Mutex
	known map[string]netip.Addr // pod key → address enrolled for it
	ready atomic.Bool
	// guardErr is why the last check of the redirection's order failed,
	// or nil: the agent is not ready while Ambit's programs may not run
	// first.
	guardErr atomic.Pointer[error]
	// dsSeen and dsRemoving: the agent's DaemonSet was seen, and seen
	// deleted or marked for deletion (Config.DaemonSet).
	dsSeen, dsRemoving atomic.Bool
	reg                *prometheus.Registry
	gauges             struct {
		enrolled   prometheus.Gauge
		syncs      *prometheus.CounterVec
		reanchored prometheus.Counter
	}
}

// guardInterval is how often the agent checks that Ambit's programs still
// run first on every interface (redirect.Redirector.Guard).
const guardInterval = 2 * time.Second

// PluginKubeconfigName is the file the plugin's kubeconfig is written to
// in the CNI config dir.
const PluginKubeconfigName = "ZZZ-ambit-cni-kubeconfig"

// Run starts the agent and blocks until ctx ends. On return the
// redirection stays in place (pinned): traffic is not disturbed by an agent
// restart. Only when the agent's DaemonSet is gone or being deleted
// (Config.DaemonSet) does it take Ambit out of the node once everything
// it runs has stopped (Uninstall).
//
// The agent owns three parts, constructed and started in this order: the
// redirection (eBPF programs and maps, the uplink), the pod watch (the
// informers and the workers that enrol and release pods), and the plugin's
// side (the socket it calls, its binary, kubeconfig and config entry).
func Run(ctx context.Context, cfg Config) error {
	a := newAgent(cfg)
	if err := a.run(ctx); err != nil {
		return err
	}
	if !a.removing() {
		return nil
	}
	a.log.Info("daemonset deleted: removing ambit from the node", logkey.Object, "DaemonSet/"+cfg.DaemonSet.String())
	if err := Uninstall(cfg); err != nil {
		return fmt.Errorf("uninstall: %w", err)
	}
	a.log.Info("ambit removed from the node")
	return nil
}

// removing tells whether the agent's DaemonSet is gone or being deleted:
// seen so by the watch, or, if the watch saw the DaemonSet but missed its
// end, by asking once more.
func (a *Agent) removing() bool {
	if a.cfg.DaemonSet.Name == "" || !a.dsSeen.Load() {
		return false
	}
	if a.dsRemoving.Load() {
		return true
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	ds, err := a.cfg.Client.AppsV1().DaemonSets(a.cfg.DaemonSet.Namespace).Get(ctx, a.cfg.DaemonSet.Name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		return true
	case err != nil:
		// Unknown: keep the node as it is (a stale entry makes pods wait
		// for an agent; a removed one would start them outside the mesh).
		a.log.Warn("check daemonset on stop: keeping ambit on the node", logkey.Error, err)
		return false
	default:
		return ds.DeletionTimestamp != nil
	}
}

func (a *Agent) run(ctx context.Context) error {
	defer a.queue.ShutDown()
	if err := a.openRedirection(); err != nil {
		return err
	}
	defer a.redir.Close()
	stopWatch, err := a.startWatch(ctx)
	if err != nil {
		return err
	}
	defer stopWatch()

	var wg sync.WaitGroup
	defer wg.Wait()
	closeServers, err := a.serve(&wg)
	if err != nil {
		return err
	}
	defer closeServers()
	if err := a.installPlugin(ctx, &wg); err != nil {
		return err
	}
	for range 2 {
		wg.Go(func() {
			for a.next(ctx) {
			}
		})
	}
	wg.Go(func() { a.guard(ctx) })
	a.log.Info("node agent running", "node", a.cfg.NodeName)
	<-ctx.Done()
	a.queue.ShutDown()
	return nil
}

// newAgent constructs the agent's state and metrics.
func newAgent(cfg Config) *Agent {
	a := &Agent{cfg: cfg, log: cfg.Log, known: map[string]netip.Addr{}, reg: prometheus.NewRegistry(),
		queue: workqueue.NewTypedRateLimitingQueue(workqueue.DefaultTypedControllerRateLimiter[string]())}
	a.gauges.enrolled = prometheus.NewGauge(prometheus.GaugeOpts{Name: "ambit_cni_enrolled_pods", Help: "Pods of this node whose traffic is redirected."})
	a.gauges.syncs = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ambit_cni_pod_syncs_total", Help: "Pod reconciliations by result."}, []string{"result"})
	a.gauges.reanchored = prometheus.NewCounter(prometheus.CounterOpts{Name: "ambit_cni_redirect_reanchored_total",
		Help: "Times another program was found before Ambit's redirection on an interface, and Ambit's put back at the head."})
	a.reg.MustRegister(a.gauges.enrolled, a.gauges.syncs, a.gauges.reanchored)
	return a
}

// openRedirection loads the redirection (or takes over the pinned one)
// and attaches the wire program to the node's uplink.
func (a *Agent) openRedirection() error {
	var err error
	if a.redir, err = redirect.Open(a.cfg.PinDir); err != nil {
		return err
	}
	uplink := a.cfg.Uplink
	if uplink == "" {
		if uplink, err = redirect.FindUplink(a.cfg.HostIP); err != nil {
			a.redir.Close()
			return fmt.Errorf("%w (set --uplink)", err)
		}
		a.log.Info("uplink found", "uplink", uplink, "host_ip", a.cfg.HostIP.String())
	}
	if err := a.redir.AttachUplink(uplink); err != nil {
		a.redir.Close()
		return err
	}
	a.log.Info("redirection loaded", "mode", a.redir.Mode(), "pins", a.cfg.PinDir)
	return nil
}

// startWatch starts the informers of the node's pods and of namespaces,
// which queue the pods to reconcile, waits for them to sync and queues
// every pod once (after removing what the pins hold for pods that are
// gone). stop shuts the informers down.
func (a *Agent) startWatch(ctx context.Context) (stop func(), err error) {
	factory := informers.NewSharedInformerFactory(a.cfg.Client, 0)
	podFactory := informers.NewSharedInformerFactoryWithOptions(a.cfg.Client, 0,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.FieldSelector = "spec.nodeName=" + a.cfg.NodeName }))
	podInf := podFactory.Core().V1().Pods()
	nsInf := factory.Core().V1().Namespaces()
	a.pods, a.nss = podInf.Lister(), nsInf.Lister()
	enqueue := func(obj any) {
		if key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj); err == nil {
			a.queue.Add(key)
		}
	}
	if _, err := podInf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: enqueue, UpdateFunc: func(_, o any) { enqueue(o) }, DeleteFunc: enqueue,
	}); err != nil {
		return nil, fmt.Errorf("watch pods: %w", err)
	}
	// A namespace label change concerns all its pods on this node.
	nsChanged := func(obj any) {
		ns, ok := obj.(*corev1.Namespace)
		if !ok {
			return
		}
		pods, _ := a.pods.Pods(ns.Name).List(everything)
		for _, p := range pods {
			a.queue.Add(p.Namespace + "/" + p.Name)
		}
	}
	if _, err := nsInf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: nsChanged, UpdateFunc: func(_, o any) { nsChanged(o) },
	}); err != nil {
		return nil, fmt.Errorf("watch namespaces: %w", err)
	}
	synced := []cache.InformerSynced{podInf.Informer().HasSynced, nsInf.Informer().HasSynced}
	var dsFactory informers.SharedInformerFactory
	if ds := a.cfg.DaemonSet; ds.Name != "" {
		dsFactory = informers.NewSharedInformerFactoryWithOptions(a.cfg.Client, 0, informers.WithNamespace(ds.Namespace),
			informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.FieldSelector = "metadata.name=" + ds.Name }))
		dsInf := dsFactory.Apps().V1().DaemonSets().Informer()
		seen := func(obj any) {
			if d, ok := obj.(*appsv1.DaemonSet); ok {
				a.dsSeen.Store(true)
				if d.DeletionTimestamp != nil {
					a.dsRemoving.Store(true)
				}
			}
		}
		if _, err := dsInf.AddEventHandler(cache.ResourceEventHandlerFuncs{
			AddFunc: seen, UpdateFunc: func(_, o any) { seen(o) },
			DeleteFunc: func(any) { a.dsRemoving.Store(true) },
		}); err != nil {
			return nil, fmt.Errorf("watch daemonset: %w", err)
		}
		// Not waited for: an agent that cannot watch it (RBAC) runs as
		// usual, and never saw it, so never uninstalls.
		dsFactory.Start(ctx.Done())
	}
	factory.Start(ctx.Done())
	podFactory.Start(ctx.Done())
	stop = func() {
		podFactory.Shutdown()
		factory.Shutdown()
		if dsFactory != nil {
			dsFactory.Shutdown()
		}
	}
	if !cache.WaitForCacheSync(ctx.Done(), synced...) {
		stop()
		return nil, fmt.Errorf("sync informers: %w", ctx.Err())
	}
	if err := a.reconcile(); err != nil {
		stop()
		return nil, err
	}
	return stop, nil
}

// serve opens the plugin's socket and the monitor (/readyz, /metrics).
func (a *Agent) serve(wg *sync.WaitGroup) (closeAll func(), err error) {
	srv, err := a.serveSocket(wg)
	if err != nil {
		return nil, err
	}
	mon, err := a.serveMonitor(wg)
	if err != nil {
		srv.Close()
		return nil, err
	}
	return func() {
		mon.Close()
		srv.Close()
	}, nil
}

// installPlugin copies the plugin's binary into the CNI bin dir, writes
// and keeps its kubeconfig, and keeps its entry in the node's CNI config
// (the agent is ready once it is there).
func (a *Agent) installPlugin(ctx context.Context, wg *sync.WaitGroup) error {
	if err := os.MkdirAll(a.cfg.CNIBinDir, 0o755); err != nil {
		return fmt.Errorf("create CNI bin dir: %w", err)
	}
	if err := install.CopyBinary(a.cfg.PluginBinary, a.cfg.CNIBinDir); err != nil {
		return err
	}
	kubeconfig := filepath.Join(a.cfg.CNIConfDir, PluginKubeconfigName)
	if err := a.writePluginKubeconfig(kubeconfig); err != nil {
		return err
	}
	wg.Go(func() { a.keepPluginKubeconfig(ctx, kubeconfig) })
	entry := map[string]any{"type": install.PluginType, "kubeconfig": kubeconfig, "agent_socket": a.cfg.Socket}
	wg.Go(func() {
		if err := install.Keep(ctx, a.cfg.CNIConfDir, entry, a.log, func() { a.ready.Store(true) }); err != nil {
			a.log.Error("keep CNI config", logkey.Error, err)
		}
	})
	return nil
}

var everything = labels.Everything()

// reconcile removes what the pins hold that no longer matches a pod of the
// node (pods deleted while the agent was down), then queues every pod.
func (a *Agent) reconcile() error {
	pods, err := a.pods.List(everything)
	if err != nil {
		return err
	}
	live := map[netip.Addr]bool{}
	for _, p := range pods {
		if ip, err := netip.ParseAddr(p.Status.PodIP); err == nil {
			live[ip] = true
		}
		a.queue.Add(p.Namespace + "/" + p.Name)
	}
	enrolled, err := a.redir.Enrolled()
	if err != nil {
		return err
	}
	for _, ip := range enrolled {
		if !live[ip] {
			a.log.Info("removing stale enrolment", "ip", ip)
			if err := a.redir.Unenroll(ip); err != nil {
				return err
			}
		}
	}
	return a.prune()
}

// prune removes the attachments of interfaces that no longer exist.
func (a *Agent) prune() error {
	attached, err := a.redir.Attached()
	if err != nil {
		return err
	}
	for _, ifname := range attached {
		if _, err := net.InterfaceByName(ifname); err != nil {
			if err := a.redir.Detach(ifname); err != nil {
				return err
			}
		}
	}
	return nil
}

func (a *Agent) next(ctx context.Context) bool {
	key, quit := a.queue.Get()
	if quit {
		return false
	}
	defer a.queue.Done(key)
	if err := a.sync(ctx, key); err != nil {
		a.gauges.syncs.WithLabelValues("error").Inc()
		a.log.Warn("sync pod", "pod", key, logkey.Error, err)
		a.queue.AddRateLimited(key)
		return true
	}
	a.gauges.syncs.WithLabelValues("ok").Inc()
	a.queue.Forget(key)
	return true
}

// sync makes the redirection of one pod match the API.
func (a *Agent) sync(ctx context.Context, key string) error {
	ns, name, err := cache.SplitMetaNamespaceKey(key)
	if err != nil {
		return err
	}
	pod, err := a.pods.Pods(ns).Get(name)
	if apierrors.IsNotFound(err) {
		// Gone from the API: the runtime has run CNI DEL, so the veth is
		// gone too; drop the pins of vanished interfaces.
		if err := a.forget(key); err != nil {
			return err
		}
		return a.prune()
	}
	if err == nil && (pod.DeletionTimestamp != nil || pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed) {
		return a.forget(key)
	}
	if err != nil {
		return err
	}
	ip, err := netip.ParseAddr(pod.Status.PodIP)
	if err != nil || pod.Spec.HostNetwork {
		return nil // no address yet, or not ours to redirect
	}
	var nsLabels map[string]string
	if n, err := a.nss.Get(ns); err == nil {
		nsLabels = n.Labels
	}
	want := enrolment.Captured(pod.Labels, nsLabels, false)
	// Every pod's veth carries the program: non-mesh pods pass through it
	// untouched, and their plaintext to a mesh pod of this node is captured
	// as inbound.
	if err := a.attachPod(ip); err != nil {
		return err
	}
	if want {
		if err := a.enroll(key, ip); err != nil {
			return err
		}
	} else if err := a.forget(key); err != nil {
		return err
	}
	return a.annotate(ctx, pod, want)
}

func (a *Agent) attachPod(ip netip.Addr) error {
	veth, err := redirect.HostInterface(ip)
	if err != nil {
		return err
	}
	return a.redir.AttachPod(veth)
}

func (a *Agent) enroll(key string, ip netip.Addr) error {
	if err := a.redir.Enroll(ip); err != nil {
		return err
	}
	a.mu.Lock()
	if _, ok := a.known[key]; !ok {
		a.log.Info("pod enrolled", "pod", key, "ip", ip)
	}
	a.known[key] = ip
	a.gauges.enrolled.Set(float64(len(a.known)))
	a.mu.Unlock()
	return nil
}

func (a *Agent) forget(key string) error {
	a.mu.Lock()
	ip, ok := a.known[key]
	delete(a.known, key)
	a.gauges.enrolled.Set(float64(len(a.known)))
	a.mu.Unlock()
	if !ok {
		return nil
	}
	a.log.Info("pod unenrolled", "pod", key, "ip", ip)
	return a.redir.Unenroll(ip)
}

// annotate sets or clears ambient.istio.io/redirection on the pod.
func (a *Agent) annotate(ctx context.Context, pod *corev1.Pod, enrolled bool) error {
	has := pod.Annotations[enrolment.AnnotationRedirection] == enrolment.AnnotationEnabled
	if has == enrolled {
		return nil
	}
	var value any
	if enrolled {
		value = enrolment.AnnotationEnabled
	}
	patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": map[string]any{enrolment.AnnotationRedirection: value}}})
	_, err := a.cfg.Client.CoreV1().Pods(pod.Namespace).Patch(ctx, pod.Name, types.MergePatchType, patch, metav1.PatchOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("annotate pod %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	return nil
}

// serveSocket serves the plugin's requests on the Unix socket.
func (a *Agent) serveSocket(wg *sync.WaitGroup) (*http.Server, error) {
	if err := os.MkdirAll(filepath.Dir(a.cfg.Socket), 0o755); err != nil {
		return nil, fmt.Errorf("create socket dir: %w", err)
	}
	_ = os.Remove(a.cfg.Socket)
	l, err := net.Listen("unix", a.cfg.Socket)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", a.cfg.Socket, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+plugin.PathAdd, a.handleAdd)
	mux.HandleFunc("POST "+plugin.PathDel, a.handleDel)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	wg.Go(func() { _ = srv.Serve(l) })
	return srv, nil
}

func decode(w http.ResponseWriter, r *http.Request) (plugin.PodRequest, []netip.Addr, bool) {
	var req plugin.PodRequest
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 64<<10)).Decode(&req); err != nil {
		http.Error(w, "decode pod request: "+err.Error(), http.StatusBadRequest)
		return req, nil, false
	}
	var ips []netip.Addr
	for _, s := range req.IPs {
		ip, err := netip.ParseAddr(s)
		if err != nil {
			http.Error(w, fmt.Sprintf("pod address %q: %v", s, err), http.StatusBadRequest)
			return req, nil, false
		}
		ips = append(ips, ip)
	}
	if req.Namespace == "" || req.Name == "" {
		http.Error(w, "pod request: want namespace and name", http.StatusBadRequest)
		return req, nil, false
	}
	return req, ips, true
}

// handleAdd enrols a new pod before it starts: the plugin decided it is in
// the mesh; the agent's informer may not have seen the pod yet.
func (a *Agent) handleAdd(w http.ResponseWriter, r *http.Request) {
	req, ips, ok := decode(w, r)
	if !ok {
		return
	}
	key := req.Namespace + "/" + req.Name
	for _, ip := range ips {
		if !ip.Is4() {
			continue // IPv6 is not redirected yet
		}
		if err := a.attachPod(ip); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		if err := a.enroll(key, ip); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
	}
	a.log.Info("cni add", "pod", key, "ips", req.IPs)
	w.WriteHeader(http.StatusOK)
}

func (a *Agent) handleDel(w http.ResponseWriter, r *http.Request) {
	req, _, ok := decode(w, r)
	if !ok {
		return
	}
	if err := a.forget(req.Namespace + "/" + req.Name); err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.WriteHeader(http.StatusOK)
}

// guard keeps Ambit's programs first on every interface it is attached
// to: a program put before them (a primary CNI that re-attached at the
// head) could pass an enrolled pod's connection on in plain text.
func (a *Agent) guard(ctx context.Context) {
	t := time.NewTicker(guardInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		fixed, err := a.redir.Guard()
		for _, name := range fixed {
			a.gauges.reanchored.Inc()
			a.log.Warn("another program ran before Ambit's redirection; put Ambit's back first", "interface", name)
		}
		if err != nil {
			a.log.Error("check redirection order", logkey.Error, err)
			a.guardErr.Store(&err)
		} else {
			a.guardErr.Store(nil)
		}
	}
}

// serveMonitor serves /readyz (ready once the plugin is chained, and
// while the redirection is known to run first on every interface),
// /metrics and /version.
func (a *Agent) serveMonitor(wg *sync.WaitGroup) (*http.Server, error) {
	l, err := net.Listen("tcp", a.cfg.MonitorAddr)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", a.cfg.MonitorAddr, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !a.ready.Load() {
			http.Error(w, "CNI plugin not chained yet", http.StatusServiceUnavailable)
			return
		}
		if err := a.guardErr.Load(); err != nil {
			http.Error(w, "redirection may not run first: "+(*err).Error(), http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ok\n"))
	})
	mux.Handle("/metrics", promhttp.HandlerFor(a.reg, promhttp.HandlerOpts{}))
	mux.Handle(version.Path, version.Handler())
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	wg.Go(func() { _ = srv.Serve(l) })
	return srv, nil
}

// Uninstall takes Ambit out of the node: the conflist entry, the plugin
// binary and kubeconfig, and all redirection.
func Uninstall(cfg Config) error {
	var errs []error
	if path, err := install.PrimaryConflist(cfg.CNIConfDir); err == nil {
		_, err := install.Remove(path)
		errs = append(errs, err)
	} else if !errors.Is(err, install.ErrNoConflist) {
		errs = append(errs, err)
	}
	for _, f := range []string{filepath.Join(cfg.CNIBinDir, install.PluginType), filepath.Join(cfg.CNIConfDir, PluginKubeconfigName)} {
		if err := os.Remove(f); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	r, err := redirect.Open(cfg.PinDir)
	if err != nil {
		errs = append(errs, err)
	} else {
		errs = append(errs, r.Remove())
	}
	return errors.Join(errs...)
}
