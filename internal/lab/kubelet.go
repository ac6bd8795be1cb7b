package lab

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/containernetworking/cni/libcni"
	cnitypes "github.com/containernetworking/cni/pkg/types"
	cnicurrent "github.com/containernetworking/cni/pkg/types/100"
	authv1 "k8s.io/api/authentication/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/retry"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/utils/ptr"

	"github.com/ambitmesh/ambit/internal/logkey"
	"github.com/ambitmesh/ambit/internal/netns"
)

// Kubelet stands in for the kubelet of one lab node. It registers the Node
// and keeps its lease, and runs the pods bound to the node: for each, a
// network namespace set up by CNI ADD with the node's conflist (whatever
// plugins are chained in it at the time), a process per container started
// inside it, readiness probes run from the node's namespace as the kubelet
// runs them, and status reported to the API. When a pod is deleted it
// stops the processes, runs CNI DEL, removes the namespace and completes
// the deletion.
type Kubelet struct {
	cfg      kubeletConfig
	log      *slog.Logger
	cni      *libcni.CNIConfig
	factory  informers.SharedInformerFactory
	informer cache.SharedIndexInformer
	queue    workqueue.TypedRateLimitingInterface[string]
	cancel   context.CancelFunc
	wg       sync.WaitGroup

	mu   sync.Mutex
	pods map[string]*podRuntime // by namespace/name
	// adds are the durations of successful CNI ADDs, for benchmarks.
	adds []time.Duration
}

type kubeletConfig struct {
	node     *Node
	labID    string
	nsPrefix string
	dir      string
	confDir  string
	cniPath  []string
	client   kubernetes.Interface
	caFile   string
	images   map[string]string
	// podInit is internal/lab/cmd/podinit, which mounts a container's
	// volumes before running it.
	podInit string
	log     *slog.Logger
}

// podRuntime is what the kubelet runs for one pod.
type podRuntime struct {
	uid types.UID
	key string
	// ns is the pod's network namespace: its own, or the node's for a
	// host-network pod (hostNetwork), which has no CNI network.
	ns          *netns.NS
	hostNetwork bool
	ip          netip.Addr
	dir         string
	netconf     *libcni.NetworkConfigList
	rtconf      *libcni.RuntimeConf
	cancel      context.CancelFunc
	done        sync.WaitGroup
	startedAt   metav1.Time
	// wake is signalled when a container exits.
	wake        chan struct{}
	mu          sync.Mutex
	containers  []*containerRuntime
	ready       bool
	readyReason string
}

type containerRuntime struct {
	name     string
	image    string
	proc     *process
	restarts int32
	started  metav1.Time
	lastExit *corev1.ContainerStateTerminated
}

func newKubelet(ctx context.Context, cfg kubeletConfig) (*Kubelet, error) {
	k := &Kubelet{
		cfg:   cfg,
		log:   cfg.log,
		cni:   libcni.NewCNIConfigWithCacheDir(cfg.cniPath, filepath.Join(cfg.dir, "cni", "cache"), nil),
		queue: workqueue.NewTypedRateLimitingQueue(workqueue.DefaultTypedControllerRateLimiter[string]()),
		pods:  map[string]*podRuntime{},
	}
	if err := k.register(ctx); err != nil {
		return nil, err
	}
	bg, cancel := context.WithCancel(context.Background())
	k.cancel = cancel
	k.factory = informers.NewSharedInformerFactoryWithOptions(cfg.client, 0,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = "spec.nodeName=" + cfg.node.Name
		}))
	k.informer = k.factory.Core().V1().Pods().Informer()
	enqueue := func(obj any) {
		if key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj); err == nil {
			k.queue.Add(key)
		}
	}
	if _, err := k.informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    enqueue,
		UpdateFunc: func(_, obj any) { enqueue(obj) },
		DeleteFunc: enqueue,
	}); err != nil {
		cancel()
		return nil, fmt.Errorf("watch pods of %s: %w", cfg.node.Name, err)
	}
	k.factory.Start(bg.Done())
	if !cache.WaitForCacheSync(ctx.Done(), k.informer.HasSynced) {
		cancel()
		return nil, fmt.Errorf("sync pods of %s: %w", cfg.node.Name, ctx.Err())
	}
	k.wg.Go(func() { k.keepLease(bg) })
	for range 2 {
		k.wg.Go(func() {
			for k.processNext(bg) {
			}
		})
	}
	return k, nil
}

// register creates the Node with its pod CIDR, address and Ready condition.
func (k *Kubelet) register(ctx context.Context) error {
	n := k.cfg.node
	node := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{
			Name: n.Name,
			Labels: map[string]string{
				"kubernetes.io/hostname": n.Name,
				"kubernetes.io/os":       "linux",
				"kubernetes.io/arch":     "amd64",
			},
		},
		Spec: corev1.NodeSpec{PodCIDR: n.PodCIDR.String(), PodCIDRs: []string{n.PodCIDR.String()}},
	}
	if _, err := k.cfg.client.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("register node %s: %w", n.Name, err)
	}
	now := metav1.Now()
	status := corev1.NodeStatus{
		Addresses: []corev1.NodeAddress{
			{Type: corev1.NodeInternalIP, Address: n.IP.String()},
			{Type: corev1.NodeHostName, Address: n.Name},
		},
		Conditions: []corev1.NodeCondition{{
			Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady",
			Message: "ambit lab kubelet stand-in is ready", LastHeartbeatTime: now, LastTransitionTime: now,
		}},
		Capacity: corev1.ResourceList{
			corev1.ResourceCPU: resource.MustParse("2"), corev1.ResourceMemory: resource.MustParse("4Gi"), corev1.ResourcePods: resource.MustParse("250"),
		},
		Allocatable: corev1.ResourceList{
			corev1.ResourceCPU: resource.MustParse("2"), corev1.ResourceMemory: resource.MustParse("4Gi"), corev1.ResourcePods: resource.MustParse("250"),
		},
		NodeInfo: corev1.NodeSystemInfo{OperatingSystem: "linux", Architecture: "amd64", KubeletVersion: "ambit-lab", ContainerRuntimeVersion: "ambit-lab://0"},
	}
	// Controllers (taints, lifecycle) may write the new Node at once.
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		cur, err := k.cfg.client.CoreV1().Nodes().Get(ctx, n.Name, getOpts)
		if err != nil {
			return err
		}
		cur.Status = status
		_, err = k.cfg.client.CoreV1().Nodes().UpdateStatus(ctx, cur, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		return fmt.Errorf("report status of node %s: %w", n.Name, err)
	}
	return nil
}

// keepLease renews the node's lease in kube-node-lease, as the kubelet's
// heartbeat, so the node lifecycle controller keeps the node Ready.
func (k *Kubelet) keepLease(ctx context.Context) {
	leases := k.cfg.client.CoordinationV1().Leases(corev1.NamespaceNodeLease)
	name := k.cfg.node.Name
	renew := func() {
		now := metav1.NewMicroTime(time.Now())
		lease, err := leases.Get(ctx, name, getOpts)
		if apierrors.IsNotFound(err) {
			lease = &coordinationv1.Lease{
				ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: corev1.NamespaceNodeLease},
				Spec: coordinationv1.LeaseSpec{
					HolderIdentity: ptr.To(name), LeaseDurationSeconds: ptr.To[int32](40), RenewTime: &now,
				},
			}
			_, err = leases.Create(ctx, lease, metav1.CreateOptions{})
		} else if err == nil {
			lease.Spec.RenewTime = &now
			_, err = leases.Update(ctx, lease, metav1.UpdateOptions{})
		}
		if err != nil && ctx.Err() == nil {
			k.log.Warn("renew node lease", logkey.Error, err)
		}
	}
	renew()
	t := time.NewTicker(10 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			renew()
		}
	}
}

func (k *Kubelet) processNext(ctx context.Context) bool {
	key, quit := k.queue.Get()
	if quit {
		return false
	}
	defer k.queue.Done(key)
	if err := k.sync(ctx, key); err != nil {
		if ctx.Err() == nil {
			k.log.Warn("sync pod", "pod", key, logkey.Error, err)
			k.queue.AddRateLimited(key)
		}
		return true
	}
	k.queue.Forget(key)
	return true
}

// sync makes what runs for the pod key match the API.
func (k *Kubelet) sync(ctx context.Context, key string) error {
	obj, exists, err := k.informer.GetStore().GetByKey(key)
	if err != nil {
		return err
	}
	k.mu.Lock()
	rt := k.pods[key]
	k.mu.Unlock()
	if !exists {
		if rt != nil {
			return k.teardown(ctx, rt, 0, false)
		}
		return nil
	}
	pod := obj.(*corev1.Pod)
	if rt != nil && rt.uid != pod.UID {
		if err := k.teardown(ctx, rt, 0, false); err != nil {
			return err
		}
		rt = nil
	}
	if pod.DeletionTimestamp != nil {
		if rt != nil {
			grace := 10 * time.Second
			if g := pod.DeletionGracePeriodSeconds; g != nil && time.Duration(*g)*time.Second < grace {
				grace = time.Duration(*g) * time.Second
			}
			if err := k.teardown(ctx, rt, grace, false); err != nil {
				return err
			}
		}
		// The kubelet completes a graceful deletion once the pod is gone.
		err := k.cfg.client.CoreV1().Pods(pod.Namespace).Delete(ctx, pod.Name, metav1.DeleteOptions{
			GracePeriodSeconds: ptr.To[int64](0),
			Preconditions:      &metav1.Preconditions{UID: &pod.UID},
		})
		if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
			return fmt.Errorf("complete deletion of pod %s: %w", key, err)
		}
		return nil
	}
	if rt != nil || pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
		return nil
	}
	return k.setup(ctx, pod)
}

// setup creates the pod's network with CNI and starts its containers.
func (k *Kubelet) setup(ctx context.Context, pod *corev1.Pod) (err error) {
	key := pod.Namespace + "/" + pod.Name
	log := k.log.With("pod", key)
	id := strings.ReplaceAll(string(pod.UID), "-", "")
	rt := &podRuntime{
		uid:  pod.UID,
		key:  key,
		dir:  filepath.Join(k.cfg.dir, "pods", string(pod.UID)),
		wake: make(chan struct{}, 1),
	}
	if err := os.MkdirAll(rt.dir, 0o755); err != nil {
		return fmt.Errorf("create pod dir: %w", err)
	}
	defer func() {
		if err != nil {
			// Leave nothing behind: the next sync starts from scratch.
			k.cleanupNetwork(context.Background(), rt)
			os.RemoveAll(rt.dir)
			k.reportFailure(ctx, pod, err)
		}
	}()
	if pod.Spec.HostNetwork {
		// As a kubelet does: the node's own namespace and address, no
		// CNI.
		rt.ns, rt.ip, rt.hostNetwork = k.cfg.node.NS, k.cfg.node.IP, true
	} else if err := k.podNetwork(ctx, pod, rt, id); err != nil {
		return err
	}

	if err := k.writePodFiles(ctx, pod, rt); err != nil {
		return err
	}
	rt.startedAt = metav1.Now()
	podCtx, cancel := context.WithCancel(context.Background())
	rt.cancel = cancel
	for i := range pod.Spec.Containers {
		c := &pod.Spec.Containers[i]
		cr := &containerRuntime{name: c.Name, image: c.Image}
		if err := k.startContainer(pod, rt, c, cr); err != nil {
			cancel()
			k.stopContainers(rt, 0)
			return err
		}
		rt.containers = append(rt.containers, cr)
	}
	k.mu.Lock()
	k.pods[key] = rt
	k.mu.Unlock()
	log.Info("pod started", "ip", rt.ip.String(), "netns", rt.ns.Name(), "hostNetwork", rt.hostNetwork)
	rt.done.Go(func() { k.supervise(podCtx, pod, rt) })
	return nil
}

// podNetwork creates the pod's own network namespace and runs CNI ADD for
// it; on error the caller cleans up (cleanupNetwork).
func (k *Kubelet) podNetwork(ctx context.Context, pod *corev1.Pod, rt *podRuntime, id string) (err error) {
	key := rt.key
	if rt.ns, err = netns.Create(k.cfg.nsPrefix + "pod-" + id[:12]); err != nil {
		return err
	}

	h, err := netns.Netlink(rt.ns)
	if err != nil {
		return err
	}
	err = loopbackUp(h, rt.ns)
	h.Close()
	if err != nil {
		return err
	}

	// Read the conflist at each ADD, as container runtimes do, so that a
	// plugin chained in later applies to pods started later.
	rt.netconf, err = k.loadConflist()
	if err != nil {
		return err
	}
	rt.rtconf = &libcni.RuntimeConf{
		ContainerID: id,
		NetNS:       rt.ns.Path(),
		IfName:      "eth0",
		Args: [][2]string{
			{"IgnoreUnknown", "true"},
			{"K8S_POD_NAMESPACE", pod.Namespace},
			{"K8S_POD_NAME", pod.Name},
			{"K8S_POD_INFRA_CONTAINER_ID", id},
			{"K8S_POD_UID", string(pod.UID)},
		},
	}
	var res cnitypes.Result
	addStart := time.Now()
	err = k.cfg.node.NS.Do(func() error {
		var err error
		res, err = k.cni.AddNetworkList(ctx, rt.netconf, rt.rtconf)
		return err
	})
	if err != nil {
		return fmt.Errorf("cni add for pod %s: %w", key, err)
	}
	k.mu.Lock()
	k.adds = append(k.adds, time.Since(addStart))
	k.mu.Unlock()
	result, err := cnicurrent.NewResultFromResult(res)
	if err != nil {
		return fmt.Errorf("cni add for pod %s: parse result: %w", key, err)
	}
	for _, ipc := range result.IPs {
		if a, ok := netip.AddrFromSlice(ipc.Address.IP); ok && a.Unmap().Is4() {
			rt.ip = a.Unmap()
			break
		}
	}
	if !rt.ip.IsValid() {
		return fmt.Errorf("cni add for pod %s: result has no IPv4 address", key)
	}
	return nil
}

func (k *Kubelet) loadConflist() (*libcni.NetworkConfigList, error) {
	files, err := libcni.ConfFiles(k.cfg.confDir, []string{".conflist"})
	if err != nil {
		return nil, fmt.Errorf("read cni config dir %s: %w", k.cfg.confDir, err)
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("read cni config dir %s: no .conflist", k.cfg.confDir)
	}
	sort.Strings(files)
	list, err := libcni.NetworkConfFromFile(files[0])
	if err != nil {
		return nil, fmt.Errorf("load cni config %s: %w", files[0], err)
	}
	return list, nil
}

// writePodFiles writes the pod's service-account token, CA and namespace,
// the projected token volumes it asks for, and its resolv.conf and hosts.
func (k *Kubelet) writePodFiles(ctx context.Context, pod *corev1.Pod, rt *podRuntime) error {
	sa := pod.Spec.ServiceAccountName
	if sa == "" {
		sa = "default"
	}
	token := func(audiences []string, seconds int64) (string, error) {
		tr, err := k.cfg.client.CoreV1().ServiceAccounts(pod.Namespace).CreateToken(ctx, sa, &authv1.TokenRequest{
			Spec: authv1.TokenRequestSpec{
				Audiences:         audiences,
				ExpirationSeconds: ptr.To(seconds),
				BoundObjectRef:    &authv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID},
			},
		}, metav1.CreateOptions{})
		if err != nil {
			return "", fmt.Errorf("request token for %s/%s: %w", pod.Namespace, sa, err)
		}
		return tr.Status.Token, nil
	}
	saDir := filepath.Join(rt.dir, "serviceaccount")
	if err := os.MkdirAll(saDir, 0o755); err != nil {
		return err
	}
	tok, err := token(nil, 24*3600)
	if err != nil {
		return err
	}
	ca, err := os.ReadFile(k.cfg.caFile)
	if err != nil {
		return fmt.Errorf("read cluster ca: %w", err)
	}
	for name, data := range map[string][]byte{"token": []byte(tok), "ca.crt": ca, "namespace": []byte(pod.Namespace)} {
		if err := os.WriteFile(filepath.Join(saDir, name), data, 0o644); err != nil {
			return fmt.Errorf("write pod file: %w", err)
		}
	}
	for _, v := range pod.Spec.Volumes {
		if v.Projected == nil {
			continue
		}
		for _, src := range v.Projected.Sources {
			st := src.ServiceAccountToken
			if st == nil {
				continue
			}
			secs := int64(3600)
			if st.ExpirationSeconds != nil {
				secs = *st.ExpirationSeconds
			}
			var auds []string
			if st.Audience != "" {
				auds = []string{st.Audience}
			}
			tok, err := token(auds, secs)
			if err != nil {
				return err
			}
			p := filepath.Join(rt.dir, "volumes", v.Name, st.Path)
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				return err
			}
			if err := os.WriteFile(p, []byte(tok), 0o644); err != nil {
				return fmt.Errorf("write pod file: %w", err)
			}
		}
	}
	for _, v := range pod.Spec.Volumes {
		if err := k.writeVolume(ctx, pod, rt, v); err != nil {
			return err
		}
	}
	resolv := fmt.Sprintf("search %[1]s.svc.%[2]s svc.%[2]s %[2]s\nnameserver %[3]s\noptions ndots:5\n", pod.Namespace, ClusterDomain, DNSServiceIP)
	if err := rt.ns.SetEtcFile("resolv.conf", []byte(resolv)); err != nil {
		return err
	}
	hosts := fmt.Sprintf("127.0.0.1\tlocalhost\n::1\tlocalhost\n%s\t%s\n", rt.ip, pod.Name)
	return rt.ns.SetEtcFile("hosts", []byte(hosts))
}

// writeVolume writes the files of a ConfigMap or downward API volume, and
// makes an emptyDir, under the pod's volumes/<name>: what startContainer
// mounts at the containers' mount paths. A missing ConfigMap that is not
// optional fails the pod's start, which is retried, as a kubelet waits for
// it.
func (k *Kubelet) writeVolume(ctx context.Context, pod *corev1.Pod, rt *podRuntime, v corev1.Volume) error {
	dir := filepath.Join(rt.dir, "volumes", v.Name)
	switch {
	case v.EmptyDir != nil:
		return os.MkdirAll(dir, 0o777)
	case v.DownwardAPI != nil:
		files := map[string]string{}
		for _, it := range v.DownwardAPI.Items {
			if it.FieldRef == nil {
				return fmt.Errorf("volume %s: item %s: only fieldRef is supported", v.Name, it.Path)
			}
			switch it.FieldRef.FieldPath {
			case "metadata.labels":
				files[it.Path] = formatMap(pod.Labels)
			case "metadata.annotations":
				files[it.Path] = formatMap(pod.Annotations)
			default:
				files[it.Path] = k.fieldRef(pod, rt, it.FieldRef.FieldPath)
			}
		}
		return writeFiles(dir, v.Name, files)
	case v.ConfigMap != nil:
		cm, err := k.cfg.client.CoreV1().ConfigMaps(pod.Namespace).Get(ctx, v.ConfigMap.Name, getOpts)
		if apierrors.IsNotFound(err) && ptr.Deref(v.ConfigMap.Optional, false) {
			return os.MkdirAll(dir, 0o755)
		}
		if err != nil {
			return fmt.Errorf("volume %s: configmap %s/%s: %w", v.Name, pod.Namespace, v.ConfigMap.Name, err)
		}
		files := map[string]string{}
		if len(v.ConfigMap.Items) == 0 {
			for key, val := range cm.Data {
				files[key] = val
			}
		}
		for _, it := range v.ConfigMap.Items {
			val, ok := cm.Data[it.Key]
			if !ok {
				return fmt.Errorf("volume %s: configmap %s/%s has no key %q", v.Name, pod.Namespace, v.ConfigMap.Name, it.Key)
			}
			files[it.Path] = val
		}
		return writeFiles(dir, v.Name, files)
	}
	return nil
}

// writeFiles writes the files of volume name (path -> content) under dir.
func writeFiles(dir, name string, files map[string]string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("volume %s: %w", name, err)
	}
	for path, val := range files {
		p := filepath.Join(dir, path)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return fmt.Errorf("volume %s: %w", name, err)
		}
		if err := os.WriteFile(p, []byte(val), 0o644); err != nil {
			return fmt.Errorf("volume %s: %w", name, err)
		}
	}
	return nil
}

// formatMap writes labels or annotations as the kubelet's downward API
// does: one key="value" a line (the value quoted as Go quotes it), sorted
// by key.
func formatMap(m map[string]string) string {
	var lines []string
	for _, k := range slices.Sorted(maps.Keys(m)) {
		lines = append(lines, fmt.Sprintf("%s=%q", k, m[k]))
	}
	return strings.Join(lines, "\n")
}

// PodDirEnv names the environment variable that tells a pod's processes
// where the kubelet stand-in put its files: serviceaccount/{token,ca.crt,
// namespace} and volumes/<volume>/<path> for projected tokens. A real
// kubelet mounts these; the lab has no mount namespaces per pod.
const PodDirEnv = "AMBIT_POD_DIR"

func (k *Kubelet) startContainer(pod *corev1.Pod, rt *podRuntime, c *corev1.Container, cr *containerRuntime) error {
	argv, err := k.argv(c)
	if err != nil {
		return fmt.Errorf("start container %s of %s: %w", c.Name, rt.key, err)
	}
	env := []string{
		"HOSTNAME=" + pod.Name,
		PodDirEnv + "=" + rt.dir,
		"KUBERNETES_SERVICE_HOST=10.96.0.1",
		"KUBERNETES_SERVICE_PORT=443",
	}
	for _, e := range c.Env {
		v := e.Value
		if e.ValueFrom != nil && e.ValueFrom.FieldRef != nil {
			v = k.fieldRef(pod, rt, e.ValueFrom.FieldRef.FieldPath)
		}
		env = append(env, e.Name+"="+v)
	}
	if len(c.VolumeMounts) > 0 {
		// The container sees its volumes at their mount paths, in a mount
		// namespace of its own (podinit).
		pre := []string{k.cfg.podInit}
		for _, vm := range c.VolumeMounts {
			src := filepath.Join(rt.dir, "volumes", vm.Name, vm.SubPath)
			if _, err := os.Stat(src); err != nil {
				return fmt.Errorf("start container %s of %s: volume %s: %w", c.Name, rt.key, vm.Name, err)
			}
			m := src + "=" + vm.MountPath
			if vm.ReadOnly {
				m += ":ro"
			}
			pre = append(pre, "--mount", m)
		}
		argv = append(append(pre, "--"), argv...)
	}
	p, err := startProcess(k.cfg.labID, rt.dir, c.Name, rt.ns, env, argv[0], argv[1:]...)
	if err != nil {
		return err
	}
	cr.proc = p
	cr.started = metav1.Now()
	go func() {
		<-p.done
		select {
		case rt.wake <- struct{}{}:
		default:
		}
	}()
	return nil
}

// argv resolves the container's command: the image names a program, which
// Command (if set) replaces and Args follow, as in Kubernetes.
func (k *Kubelet) argv(c *corev1.Container) ([]string, error) {
	bin, ok := k.cfg.images[c.Image]
	if !ok {
		name, _, _ := strings.Cut(c.Image, ":")
		bin, ok = k.cfg.images[name]
	}
	if !ok {
		return nil, fmt.Errorf("image %q: the lab has no program for it (known: %s)", c.Image, strings.Join(keys(k.cfg.images), ", "))
	}
	argv := append([]string{bin}, c.Args...)
	if len(c.Command) > 0 {
		argv = append(append([]string{}, c.Command...), c.Args...)
		if !filepath.IsAbs(argv[0]) {
			argv[0] = bin
		}
	}
	return argv, nil
}

func (k *Kubelet) fieldRef(pod *corev1.Pod, rt *podRuntime, path string) string {
	switch path {
	case "metadata.name":
		return pod.Name
	case "metadata.namespace":
		return pod.Namespace
	case "metadata.uid":
		return string(pod.UID)
	case "spec.nodeName":
		return pod.Spec.NodeName
	case "spec.serviceAccountName":
		return pod.Spec.ServiceAccountName
	case "status.podIP":
		return rt.ip.String()
	case "status.hostIP":
		return k.cfg.node.IP.String()
	}
	if l, ok := strings.CutPrefix(path, "metadata.labels['"); ok {
		return pod.Labels[strings.TrimSuffix(l, "']")]
	}
	return ""
}

// supervise restarts exited containers as the restart policy says, runs
// readiness probes, and reports status whenever it changes.
func (k *Kubelet) supervise(ctx context.Context, pod *corev1.Pod, rt *podRuntime) {
	period := time.Duration(0)
	for _, c := range pod.Spec.Containers {
		if p := c.ReadinessProbe; p != nil {
			d := time.Duration(max(p.PeriodSeconds, 1)) * time.Second
			if period == 0 || d < period {
				period = d
			}
		}
	}
	if period == 0 {
		period = 10 * time.Second
	}
	var last string
	tick := time.NewTicker(period)
	defer tick.Stop()
	for {
		ready, reason := k.evaluate(ctx, pod, rt)
		rt.mu.Lock()
		rt.ready, rt.readyReason = ready, reason
		rt.mu.Unlock()
		if st := k.statusKey(rt); st != last {
			if err := k.reportStatus(ctx, pod, rt); err != nil {
				if ctx.Err() != nil {
					return
				}
				k.log.Warn("report pod status", "pod", rt.key, logkey.Error, err)
			} else {
				last = st
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		case <-rt.wake:
		}
	}
}

// evaluate restarts containers that exited (policy permitting) and runs
// the readiness probes; it returns whether the pod is ready.
func (k *Kubelet) evaluate(ctx context.Context, pod *corev1.Pod, rt *podRuntime) (bool, string) {
	ready, reason := true, ""
	for i := range pod.Spec.Containers {
		c := &pod.Spec.Containers[i]
		rt.mu.Lock()
		cr := rt.containers[i]
		rt.mu.Unlock()
		if cr.proc.exited() {
			code := int32(cr.proc.cmd.ProcessState.ExitCode())
			rt.mu.Lock()
			cr.lastExit = &corev1.ContainerStateTerminated{ExitCode: code, Reason: "Error", StartedAt: cr.started, FinishedAt: metav1.Now()}
			if code == 0 {
				cr.lastExit.Reason = "Completed"
			}
			rt.mu.Unlock()
			policy := pod.Spec.RestartPolicy
			if policy == corev1.RestartPolicyAlways || (policy == corev1.RestartPolicyOnFailure && code != 0) {
				fresh := &containerRuntime{name: cr.name, image: cr.image, restarts: cr.restarts + 1, lastExit: cr.lastExit}
				if err := k.startContainer(pod, rt, c, fresh); err == nil {
					rt.mu.Lock()
					rt.containers[i] = fresh
					rt.mu.Unlock()
				}
			}
			ready, reason = false, fmt.Sprintf("container %s exited with code %d", c.Name, code)
			continue
		}
		if err := k.probe(ctx, rt, c.ReadinessProbe); err != nil {
			ready, reason = false, fmt.Sprintf("container %s readiness probe: %v", c.Name, err)
		}
	}
	return ready, reason
}

// probe runs a readiness probe from the node's namespace, as the kubelet
// does; a container without one is ready while it runs.
func (k *Kubelet) probe(ctx context.Context, rt *podRuntime, p *corev1.Probe) error {
	if p == nil {
		return nil
	}
	timeout := time.Duration(max(p.TimeoutSeconds, 1)) * time.Second
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	switch {
	case p.HTTPGet != nil:
		port := p.HTTPGet.Port.IntValue()
		url := fmt.Sprintf("http://%s%s", net.JoinHostPort(rt.ip.String(), fmt.Sprint(port)), p.HTTPGet.Path)
		return httpGet(ctx, k.cfg.node.NS, nil, url)
	case p.TCPSocket != nil:
		c, err := k.cfg.node.NS.DialContext(ctx, "tcp", net.JoinHostPort(rt.ip.String(), fmt.Sprint(p.TCPSocket.Port.IntValue())))
		if err != nil {
			return err
		}
		return c.Close()
	}
	return errors.New("probe: only httpGet and tcpSocket are supported in the lab")
}

func (k *Kubelet) statusKey(rt *podRuntime) string {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	s := fmt.Sprint(rt.ready)
	for _, c := range rt.containers {
		s += fmt.Sprintf("|%s:%d:%v", c.name, c.restarts, c.proc.exited())
	}
	return s
}

// reportStatus writes the pod's status: Running with its IP, and Ready as
// the probes say.
func (k *Kubelet) reportStatus(ctx context.Context, pod *corev1.Pod, rt *podRuntime) error {
	rt.mu.Lock()
	ready, reason := rt.ready, rt.readyReason
	var statuses []corev1.ContainerStatus
	for _, c := range rt.containers {
		cs := corev1.ContainerStatus{
			Name: c.name, Image: c.image, ImageID: c.image, RestartCount: c.restarts,
			ContainerID:          "lab://" + string(rt.uid) + "/" + c.name,
			LastTerminationState: corev1.ContainerState{Terminated: c.lastExit},
		}
		if c.proc.exited() {
			cs.State.Terminated = &corev1.ContainerStateTerminated{ExitCode: int32(c.proc.cmd.ProcessState.ExitCode()), StartedAt: c.started, FinishedAt: metav1.Now()}
		} else {
			cs.State.Running = &corev1.ContainerStateRunning{StartedAt: c.started}
			cs.Started = ptr.To(true)
			cs.Ready = ready
		}
		statuses = append(statuses, cs)
	}
	rt.mu.Unlock()
	cond := func(t corev1.PodConditionType, ok bool, msg string) corev1.PodCondition {
		s := corev1.ConditionTrue
		if !ok {
			s = corev1.ConditionFalse
		}
		return corev1.PodCondition{Type: t, Status: s, Message: msg, LastTransitionTime: metav1.Now()}
	}
	return retry.RetryOnConflict(retry.DefaultRetry, func() error {
		cur, err := k.cfg.client.CoreV1().Pods(pod.Namespace).Get(ctx, pod.Name, getOpts)
		if err != nil {
			return err
		}
		if cur.UID != rt.uid {
			return nil
		}
		cur.Status.Phase = corev1.PodRunning
		cur.Status.HostIP = k.cfg.node.IP.String()
		cur.Status.HostIPs = []corev1.HostIP{{IP: cur.Status.HostIP}}
		cur.Status.PodIP = rt.ip.String()
		cur.Status.PodIPs = []corev1.PodIP{{IP: cur.Status.PodIP}}
		cur.Status.StartTime = &rt.startedAt
		cur.Status.ContainerStatuses = statuses
		cur.Status.Conditions = []corev1.PodCondition{
			cond(corev1.PodScheduled, true, ""),
			cond(corev1.PodInitialized, true, ""),
			cond(corev1.ContainersReady, ready, reason),
			cond(corev1.PodReady, ready, reason),
		}
		_, err = k.cfg.client.CoreV1().Pods(pod.Namespace).UpdateStatus(ctx, cur, metav1.UpdateOptions{})
		return err
	})
}

// reportFailure records on the pod why it could not start.
func (k *Kubelet) reportFailure(ctx context.Context, pod *corev1.Pod, cause error) {
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		cur, err := k.cfg.client.CoreV1().Pods(pod.Namespace).Get(ctx, pod.Name, getOpts)
		if err != nil {
			return err
		}
		cur.Status.Phase = corev1.PodPending
		cur.Status.Conditions = []corev1.PodCondition{{
			Type: corev1.PodReady, Status: corev1.ConditionFalse, Reason: "SandboxCreationFailed",
			Message: cause.Error(), LastTransitionTime: metav1.Now(),
		}}
		_, err = k.cfg.client.CoreV1().Pods(pod.Namespace).UpdateStatus(ctx, cur, metav1.UpdateOptions{})
		return err
	})
	if err != nil && ctx.Err() == nil {
		k.log.Warn("report pod failure", "pod", pod.Namespace+"/"+pod.Name, logkey.Error, err)
	}
}

// teardown stops the pod's processes, runs CNI DEL and removes its
// namespace and files.
//
// With force (the lab is shutting down) a failing CNI DEL is logged and the
// namespace removed all the same; otherwise the error is returned and the
// deletion retried, as a runtime does.
func (k *Kubelet) teardown(ctx context.Context, rt *podRuntime, grace time.Duration, force bool) error {
	if rt.cancel != nil {
		rt.cancel()
	}
	rt.done.Wait()
	k.stopContainers(rt, grace)
	if err := k.cleanupNetwork(ctx, rt); err != nil {
		if !force {
			return err
		}
		k.log.Warn("cni del at shutdown", "pod", rt.key, logkey.Error, err)
		if err := rt.ns.Delete(); !rt.hostNetwork && err != nil {
			return err
		}
	}
	if err := os.RemoveAll(rt.dir); err != nil {
		return fmt.Errorf("remove pod dir: %w", err)
	}
	k.mu.Lock()
	if k.pods[rt.key] == rt {
		delete(k.pods, rt.key)
	}
	k.mu.Unlock()
	k.log.Info("pod stopped", "pod", rt.key)
	return nil
}

func (k *Kubelet) stopContainers(rt *podRuntime, grace time.Duration) {
	rt.mu.Lock()
	cs := append([]*containerRuntime(nil), rt.containers...)
	rt.mu.Unlock()
	var wg sync.WaitGroup
	for _, c := range cs {
		if c.proc != nil {
			wg.Go(func() { c.proc.stop(max(grace, 100*time.Millisecond)) })
		}
	}
	wg.Wait()
}

// cleanupNetwork runs CNI DEL (idempotent by the CNI spec) and deletes the
// pod's namespace.
func (k *Kubelet) cleanupNetwork(ctx context.Context, rt *podRuntime) error {
	if rt.hostNetwork {
		return nil // the node's namespace is not the pod's to remove
	}
	if rt.netconf != nil && rt.rtconf != nil {
		err := k.cfg.node.NS.Do(func() error {
			return k.cni.DelNetworkList(ctx, rt.netconf, rt.rtconf)
		})
		if err != nil {
			return fmt.Errorf("cni del for pod %s: %w", rt.key, err)
		}
	}
	if rt.ns != nil {
		return rt.ns.Delete()
	}
	return nil
}

// Exec runs a command inside a pod's network namespace, like kubectl exec,
// and returns its combined output.
func (k *Kubelet) Exec(ctx context.Context, namespace, name string, argv ...string) ([]byte, error) {
	k.mu.Lock()
	rt := k.pods[namespace+"/"+name]
	k.mu.Unlock()
	if rt == nil {
		return nil, fmt.Errorf("exec in pod %s/%s: not running on %s", namespace, name, k.cfg.node.Name)
	}
	cmd := rt.ns.Command(ctx, argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), EnvLabID+"="+k.cfg.labID, PodDirEnv+"="+rt.dir)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("exec %v in pod %s/%s: %w: %s", argv, namespace, name, err, strings.TrimSpace(string(out)))
	}
	return out, nil
}

// KillContainer kills the processes of a container of a pod running on
// this node (SIGKILL), as a crash would; the pod's restart policy then
// applies.
func (k *Kubelet) KillContainer(namespace, name, container string) error {
	k.mu.Lock()
	rt := k.pods[namespace+"/"+name]
	k.mu.Unlock()
	if rt == nil {
		return fmt.Errorf("kill container %s of pod %s/%s: not running on %s", container, namespace, name, k.cfg.node.Name)
	}
	rt.mu.Lock()
	var cr *containerRuntime
	for _, c := range rt.containers {
		if c.name == container {
			cr = c
		}
	}
	rt.mu.Unlock()
	if cr == nil {
		return fmt.Errorf("kill container %s of pod %s/%s: no such container", container, namespace, name)
	}
	cr.proc.stop(0)
	return nil
}

// TakeCNIAddDurations returns how long each successful CNI ADD took since
// the last call, and forgets them.
func (k *Kubelet) TakeCNIAddDurations() []time.Duration {
	k.mu.Lock()
	defer k.mu.Unlock()
	d := k.adds
	k.adds = nil
	return d
}

// PodNetNS returns the network namespace of a pod running on this node.
func (k *Kubelet) PodNetNS(namespace, name string) (*netns.NS, bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	rt := k.pods[namespace+"/"+name]
	if rt == nil {
		return nil, false
	}
	return rt.ns, true
}

// Close stops watching, and stops every pod with CNI DEL. It leaves the API
// objects alone: the lab is going away.
func (k *Kubelet) Close() error {
	k.cancel()
	k.queue.ShutDown()
	k.factory.Shutdown()
	k.wg.Wait()
	k.mu.Lock()
	var rts []*podRuntime
	for _, rt := range k.pods {
		rts = append(rts, rt)
	}
	k.mu.Unlock()
	var errs []error
	for _, rt := range rts {
		if err := k.teardown(context.Background(), rt, 2*time.Second, true); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (k *Kubelet) logs(lines int) string {
	k.mu.Lock()
	defer k.mu.Unlock()
	var b strings.Builder
	for key, rt := range k.pods {
		rt.mu.Lock()
		for _, c := range rt.containers {
			fmt.Fprintf(&b, "==== pod %s container %s on %s\n%s\n", key, c.name, k.cfg.node.Name, c.proc.tail(lines))
		}
		rt.mu.Unlock()
	}
	return b.String()
}

func keys(m map[string]string) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}
