// Package plugin is Ambit's chained CNI plugin. It runs after the node's
// primary plugin, returns the primary's result unchanged, and for a pod
// that belongs in the ambient mesh asks the node agent to redirect its
// traffic, returning only once that is done. If the agent cannot be
// reached, the ADD of a pod that must be enrolled fails (never a pod
// silently outside the mesh); every other pod is added as usual.
//
// Errors carry the codes of the CNI spec (SPEC.md, "Error"):
//   - 6 (ErrDecodingFailure): the config on stdin, or the prevResult in it,
//     is not JSON of the expected shape;
//   - 7 (ErrInvalidNetworkConfig): it decodes, but agent_socket or
//     kubeconfig is missing, or ADD and CHECK get no prevResult;
//   - 4 (ErrInvalidEnvironmentVariables): CNI_ARGS is malformed, or names a
//     pod without its namespace or the reverse (refused, not taken for a
//     container outside Kubernetes: the pod may belong in the mesh);
//   - 11 (ErrTryAgainLater): the apiserver or the node agent cannot be
//     reached or fails: transient (agent restarting, apiserver away), and
//     the runtime's retry of the ADD is the remedy;
//   - 50 (ErrPluginNotAvailable): STATUS, whatever keeps the plugin from
//     serving an ADD (the code the spec defines for STATUS);
//   - 999 (ErrInternal, skel's code for a plain error): anything else.
//
// skel's own refusals, before a command is called, use the same codes
// (6, 7, and 1 for an unsupported cniVersion, 4 for a missing variable).
//
// DEL returns none of them: it succeeds whatever its input (see Main).
package plugin

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/ambitmesh/ambit/internal/enrolment"
	"github.com/ambitmesh/ambit/internal/logkey"
)

// Conf is the plugin's entry in the conflist.
type Conf struct {
	types.PluginConf
	// Kubeconfig lets the plugin read the pod's and namespace's labels.
	Kubeconfig string `json:"kubeconfig"`
	// AgentSocket is the node agent's Unix socket.
	AgentSocket string `json:"agent_socket"`
}

// PodRequest is what the plugin tells the agent about a pod.
type PodRequest struct {
	Namespace   string   `json:"namespace"`
	Name        string   `json:"name"`
	UID         string   `json:"uid,omitempty"`
	ContainerID string   `json:"containerID"`
	NetNS       string   `json:"netns,omitempty"`
	IPs         []string `json:"ips"`
}

// Paths of the agent's API on its Unix socket.
const (
	PathAdd = "/v1/pods/add"
	PathDel = "/v1/pods/del"
)

// PodLabels returns the labels of a pod and of its namespace, and whether
// the pod uses the host network.
type PodLabels func(ctx context.Context, conf *Conf, namespace, name string) (pod, ns map[string]string, hostNetwork bool, err error)

// Plugin carries what the commands depend on, so tests can replace the
// Kubernetes lookup.
type Plugin struct {
	Labels  PodLabels
	Timeout time.Duration
	// Log receives what DEL ignores (the runtime shows nothing of a DEL
	// that succeeds); the binary's goes to stderr, the runtime's log.
	Log *slog.Logger
}

// New returns the plugin with its real dependencies.
func New() *Plugin {
	return &Plugin{Labels: kubeLabels, Timeout: 30 * time.Second, Log: slog.New(slog.NewJSONHandler(os.Stderr, nil))}
}

const about = "ambit-cni: enrols ambient pods with Ambit's node agent"

// Main runs the plugin as the ambit-cni binary and returns its exit
// status: skel's dispatch of the commands, except that a DEL always
// succeeds. skel refuses a config it cannot decode (or whose version it
// does not support) before Del is called, but a failed DEL halts the
// runtime's DEL of the whole chain (SPEC.md, "Deleting an attachment"), so
// the primary plugin, deleted after this one, would keep the pod's
// address, and the runtime would retry the DEL for ever with the pod's
// sandbox stuck. This plugin's DEL is only a courtesy to the agent, which
// cleans up from the API anyway: nothing it could report is worth that.
func (p *Plugin) Main() int {
	err := skel.PluginMainFuncsWithError(p.Funcs(), version.All, about)
	if err == nil {
		return 0
	}
	if os.Getenv("CNI_COMMAND") == "DEL" {
		p.Log.Warn("DEL: error ignored, success returned", "container", os.Getenv("CNI_CONTAINERID"), logkey.Error, err)
		return 0
	}
	if perr := err.Print(); perr != nil {
		p.Log.Error("print CNI error", "cni_error", err, logkey.Error, perr)
	}
	return 1
}

// Funcs are the plugin's commands for skel.PluginMainFuncs.
func (p *Plugin) Funcs() skel.CNIFuncs {
	return skel.CNIFuncs{Add: p.Add, Del: p.Del, Check: p.Check, Status: p.Status, GC: func(*skel.CmdArgs) error { return nil }}
}

// k8sArgs are the CNI_ARGS Kubernetes runtimes pass.
type k8sArgs struct {
	types.CommonArgs
	K8S_POD_NAMESPACE          types.UnmarshallableString //nolint:revive // CNI_ARGS names
	K8S_POD_NAME               types.UnmarshallableString //nolint:revive
	K8S_POD_INFRA_CONTAINER_ID types.UnmarshallableString //nolint:revive
	K8S_POD_UID                types.UnmarshallableString //nolint:revive
}

// ParseConf reads the plugin's configuration and its prevResult, with the
// spec's codes: 6 for what cannot be decoded, 7 for what is missing.
func ParseConf(data []byte) (*Conf, error) {
	conf, err := decodeConf(data)
	if err != nil {
		return nil, err
	}
	if conf.Kubeconfig == "" {
		// Without it every pod's ADD would fail (client-go would fall back
		// to an in-cluster config the host does not have), retried in vain.
		return nil, types.NewError(types.ErrInvalidNetworkConfig, "ambit-cni config: no kubeconfig",
			"want the path of the kubeconfig the node agent writes, to read pods' labels")
	}
	if err := parsePrevResult(conf); err != nil {
		return nil, err
	}
	return conf, nil
}

// decodeConf reads the plugin's own fields, all DEL needs, and leaves the
// prevResult undecoded.
func decodeConf(data []byte) (*Conf, error) {
	conf := &Conf{}
	if err := json.Unmarshal(data, conf); err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, "decode ambit-cni config", err.Error())
	}
	if conf.AgentSocket == "" {
		return nil, types.NewError(types.ErrInvalidNetworkConfig, "ambit-cni config: no agent_socket",
			"want the path of the node agent's Unix socket")
	}
	return conf, nil
}

// parsePrevResult decodes the primary plugin's result in the config, if
// there is one.
func parsePrevResult(conf *Conf) error {
	if err := version.ParsePrevResult(&conf.PluginConf); err != nil {
		return types.NewError(types.ErrDecodingFailure, "decode ambit-cni prevResult", err.Error())
	}
	return nil
}

// addresses returns the pod's addresses from the primary plugin's result.
func addresses(prev types.Result) ([]string, error) {
	res, err := current.NewResultFromResult(prev)
	if err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, "ambit-cni: read prevResult as a CNI 1.0 result", err.Error())
	}
	var ips []string
	for _, ip := range res.IPs {
		ips = append(ips, ip.Address.IP.String())
	}
	return ips, nil
}

// podArgs reads the pod's namespace and name from CNI_ARGS. Neither is a
// container outside Kubernetes, with nothing to enrol; one without the
// other is refused, since the pod it names may belong in the mesh.
func podArgs(cniArgs string) (k8sArgs, error) {
	var ka k8sArgs
	if err := types.LoadArgs(cniArgs, &ka); err != nil {
		return ka, types.NewError(types.ErrInvalidEnvironmentVariables, "ambit-cni: parse CNI_ARGS", err.Error())
	}
	if (ka.K8S_POD_NAMESPACE == "") != (ka.K8S_POD_NAME == "") {
		return ka, types.NewError(types.ErrInvalidEnvironmentVariables,
			fmt.Sprintf("ambit-cni: CNI_ARGS has K8S_POD_NAMESPACE=%q and K8S_POD_NAME=%q", ka.K8S_POD_NAMESPACE, ka.K8S_POD_NAME),
			"want both, to decide whether the pod belongs in the mesh, or neither for a container outside Kubernetes")
	}
	return ka, nil
}

// Add enrols the pod if it belongs in the mesh and passes the primary
// plugin's result on.
func (p *Plugin) Add(args *skel.CmdArgs) error {
	conf, err := ParseConf(args.StdinData)
	if err != nil {
		return err
	}
	if conf.PrevResult == nil {
		return types.NewError(types.ErrInvalidNetworkConfig, "ambit-cni must be chained after a primary plugin", "no prevResult in the config")
	}
	ka, err := podArgs(args.Args)
	if err != nil {
		return err
	}
	ns, name := string(ka.K8S_POD_NAMESPACE), string(ka.K8S_POD_NAME)
	if name != "" {
		ctx, cancel := context.WithTimeout(context.Background(), p.Timeout)
		defer cancel()
		podLabels, nsLabels, hostNet, err := p.Labels(ctx, conf, ns, name)
		if err != nil {
			// Without the labels there is no telling whether the pod must
			// be in the mesh: refuse rather than risk plaintext.
			return types.NewError(types.ErrTryAgainLater, fmt.Sprintf("ambit-cni: decide enrolment of pod %s/%s", ns, name), err.Error())
		}
		if enrolment.Captured(podLabels, nsLabels, hostNet) {
			ips, err := addresses(conf.PrevResult)
			if err != nil {
				return err
			}
			req := PodRequest{Namespace: ns, Name: name, UID: string(ka.K8S_POD_UID), ContainerID: args.ContainerID, NetNS: args.Netns, IPs: ips}
			if err := post(ctx, conf.AgentSocket, PathAdd, req); err != nil {
				return types.NewError(types.ErrTryAgainLater,
					fmt.Sprintf("ambit-cni: pod %s/%s is in the ambient mesh but its redirection could not be set up", ns, name), err.Error())
			}
		}
	}
	return types.PrintResult(conf.PrevResult, conf.CNIVersion)
}

// Del tells the agent the pod is gone, so its address stops being
// redirected at once even before the agent's watch sees the deletion. It
// never fails: DEL must be idempotent, the agent cleans up from the API
// anyway, and a failed DEL would stop the runtime's DEL of the chain (see
// Main). What it cannot decode it logs and goes on without: without the
// prevResult it tells the agent of the pod without its addresses (the
// agent forgets pods by name); without the config it has no socket, and
// no one to tell.
func (p *Plugin) Del(args *skel.CmdArgs) error {
	conf, err := decodeConf(args.StdinData)
	if err != nil {
		p.Log.Warn("DEL: config ignored, agent not told", "container", args.ContainerID, logkey.Error, err)
		return nil
	}
	var ka k8sArgs
	if err := types.LoadArgs(args.Args, &ka); err != nil {
		p.Log.Warn("DEL: CNI_ARGS ignored", "container", args.ContainerID, logkey.Error, err)
	}
	req := PodRequest{Namespace: string(ka.K8S_POD_NAMESPACE), Name: string(ka.K8S_POD_NAME), UID: string(ka.K8S_POD_UID), ContainerID: args.ContainerID}
	err = parsePrevResult(conf)
	if err == nil && conf.PrevResult != nil {
		req.IPs, err = addresses(conf.PrevResult)
	}
	if err != nil {
		p.Log.Warn("DEL: prevResult ignored, agent told without the pod's addresses", "container", args.ContainerID, logkey.Error, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = post(ctx, conf.AgentSocket, PathDel, req)
	return nil
}

// Check verifies that the plugin is chained and configured.
func (p *Plugin) Check(args *skel.CmdArgs) error {
	conf, err := ParseConf(args.StdinData)
	if err != nil {
		return err
	}
	if conf.PrevResult == nil {
		return types.NewError(types.ErrInvalidNetworkConfig, "ambit-cni must be chained after a primary plugin", "no prevResult in the config")
	}
	return nil
}

// Status (CNI 1.1) reports the plugin ready when its configuration is
// usable. It does not require the agent: pods outside the mesh can be
// added without it, and those inside fail their ADD with the reason.
func (p *Plugin) Status(args *skel.CmdArgs) error {
	conf, err := ParseConf(args.StdinData)
	if err != nil {
		return types.NewError(types.ErrPluginNotAvailable, "ambit-cni config", err.Error())
	}
	if _, err := os.Stat(conf.Kubeconfig); err != nil {
		return types.NewError(types.ErrPluginNotAvailable, "ambit-cni kubeconfig", err.Error())
	}
	return nil
}

func post(ctx context.Context, socket, path string, req PodRequest) error {
	body, err := json.Marshal(req)
	if err != nil {
		return err
	}
	client := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
	}}
	defer client.CloseIdleConnections()
	hreq, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://agent"+path, bytes.NewReader(body))
	if err != nil {
		return err
	}
	hreq.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(hreq)
	if err != nil {
		return fmt.Errorf("ask node agent at %s: %w", socket, err)
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("node agent: %s: %s", resp.Status, bytes.TrimSpace(msg))
	}
	return nil
}

// kubeLabels reads the labels from the apiserver with the plugin's
// kubeconfig.
func kubeLabels(ctx context.Context, conf *Conf, namespace, name string) (map[string]string, map[string]string, bool, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", conf.Kubeconfig)
	if err != nil {
		return nil, nil, false, fmt.Errorf("load kubeconfig %s: %w", conf.Kubeconfig, err)
	}
	c, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, nil, false, fmt.Errorf("create kubernetes client: %w", err)
	}
	pod, err := c.CoreV1().Pods(namespace).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return nil, nil, false, fmt.Errorf("get pod %s/%s: %w", namespace, name, err)
	}
	ns, err := c.CoreV1().Namespaces().Get(ctx, namespace, metav1.GetOptions{})
	if err != nil {
		return nil, nil, false, fmt.Errorf("get namespace %s: %w", namespace, err)
	}
	return pod.Labels, ns.Labels, pod.Spec.HostNetwork, nil
}
