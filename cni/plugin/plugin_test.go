package plugin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/google/go-cmp/cmp"

	"github.com/ambitmesh/ambit/internal/enrolment"
	"github.com/ambitmesh/ambit/internal/netns"
	"github.com/ambitmesh/ambit/internal/testutil"
)

// fakeAgent serves the agent's API on a Unix socket and records requests.
type fakeAgent struct {
	socket string
	mu     sync.Mutex
	adds   []PodRequest
	dels   []PodRequest
}

func startAgent(t *testing.T, dir string) *fakeAgent {
	t.Helper()
	a := &fakeAgent{socket: filepath.Join(dir, "agent.sock")}
	l, err := net.Listen("unix", a.socket)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	record := func(list *[]PodRequest) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			var req PodRequest
			if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			a.mu.Lock()
			*list = append(*list, req)
			a.mu.Unlock()
		}
	}
	mux.HandleFunc("POST "+PathAdd, record(&a.adds))
	mux.HandleFunc("POST "+PathDel, record(&a.dels))
	srv := &http.Server{Handler: mux}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return a
}

// labels is a PodLabels from a table: pod name → (pod labels, namespace
// labels); an unknown pod is an apiserver error.
func labels(table map[string][2]map[string]string) PodLabels {
	return func(_ context.Context, _ *Conf, _, name string) (map[string]string, map[string]string, bool, error) {
		l, ok := table[name]
		if !ok {
			return nil, nil, false, errors.New("apiserver unreachable")
		}
		return l[0], l[1], false, nil
	}
}

// bridgeAdd runs the reference bridge plugin for a pod namespace, from the
// node namespace, and returns the config our plugin gets: its own entry
// with the bridge's result as prevResult.
func bridgeAdd(t *testing.T, node, pod *netns.NS, dir, socket string) []byte {
	t.Helper()
	conflist := fmt.Sprintf(`{"cniVersion":"1.0.0","name":"test","plugins":[
		{"type":"bridge","bridge":"br-amb","isGateway":true,
		 "ipam":{"type":"host-local","ranges":[[{"subnet":"10.99.0.0/24"}]],"dataDir":%q}}]}`, filepath.Join(dir, "ipam"))
	list, err := libcni.NetworkConfFromBytes([]byte(conflist))
	if err != nil {
		t.Fatal(err)
	}
	cni := libcni.NewCNIConfigWithCacheDir([]string{"/usr/lib/cni"}, filepath.Join(dir, "cache"), nil)
	rt := &libcni.RuntimeConf{ContainerID: pod.Name(), NetNS: pod.Path(), IfName: "eth0"}
	var res types.Result
	if err := node.Do(func() error {
		var err error
		res, err = cni.AddNetworkList(context.Background(), list, rt)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		node.Do(func() error { return cni.DelNetworkList(context.Background(), list, rt) })
	})
	r, err := current.NewResultFromResult(res)
	if err != nil {
		t.Fatal(err)
	}
	conf := map[string]any{
		"cniVersion": "1.0.0", "name": "test", "type": "ambit-cni",
		"agent_socket": socket, "kubeconfig": filepath.Join(dir, "kubeconfig"),
		"prevResult": r,
	}
	data, err := json.Marshal(conf)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// capture runs fn with stdout redirected, as skel prints results there.
func capture(t *testing.T, fn func() error) (string, error) {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	old := os.Stdout
	os.Stdout = w
	done := make(chan string)
	go func() {
		b, _ := io.ReadAll(r)
		done <- string(b)
	}()
	ferr := fn()
	os.Stdout = old
	w.Close()
	return <-done, ferr
}

// TestPluginChainedAfterBridge: in two real pod namespaces wired by the
// bridge plugin, ADD enrols the ambient pod with the agent (its address
// from the bridge's result) and passes the bridge's result on unchanged,
// leaves the other pod alone, and the pods talk over the bridge.
func TestPluginChainedAfterBridge(t *testing.T) {
	testutil.RequireRoot(t)
	dir := t.TempDir()
	mk := func(name string) *netns.NS {
		ns, err := netns.Create(fmt.Sprintf("ambit-plugintest-%d-%s", os.Getpid(), name))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ns.Delete() })
		return ns
	}
	node, podA, podB := mk("node"), mk("a"), mk("b")
	agent := startAgent(t, dir)
	ambient := map[string]string{enrolment.LabelDataplaneMode: enrolment.ModeAmbient}
	p := &Plugin{Labels: labels(map[string][2]map[string]string{"a": {nil, ambient}, "b": {nil, nil}}), Timeout: 5 * time.Second,
		Log: slog.New(slog.NewTextHandler(t.Output(), nil))}

	confs := map[string][]byte{}
	for name, ns := range map[string]*netns.NS{"a": podA, "b": podB} {
		confs[name] = bridgeAdd(t, node, ns, dir, agent.socket)
		args := &skel.CmdArgs{ContainerID: ns.Name(), Netns: ns.Path(), IfName: "eth0",
			Args: "K8S_POD_NAMESPACE=shop;K8S_POD_NAME=" + name, StdinData: confs[name]}
		out, err := capture(t, func() error { return p.Add(args) })
		if err != nil {
			t.Fatalf("ADD %s: %v", name, err)
		}
		var in, got map[string]any
		json.Unmarshal(confs[name], &in)
		if err := json.Unmarshal([]byte(out), &got); err != nil {
			t.Fatalf("ADD %s output %q: %v", name, out, err)
		}
		// The result is printed in the conf's CNI version; all else is the
		// bridge's.
		want := in["prevResult"].(map[string]any)
		if got["cniVersion"] != in["cniVersion"] {
			t.Errorf("ADD %s result version: got %v, want %v", name, got["cniVersion"], in["cniVersion"])
		}
		delete(want, "cniVersion")
		delete(got, "cniVersion")
		wantJSON, _ := json.Marshal(want)
		gotJSON, _ := json.Marshal(got)
		if string(wantJSON) != string(gotJSON) {
			t.Errorf("ADD %s result: got %s, want the bridge's result %s unchanged", name, gotJSON, wantJSON)
		}
	}
	if len(agent.adds) != 1 || agent.adds[0].Name != "a" || agent.adds[0].Namespace != "shop" || len(agent.adds[0].IPs) != 1 {
		t.Fatalf("agent ADD requests: got %+v, want one for shop/a with its address", agent.adds)
	}
	ipA := agent.adds[0].IPs[0]

	// Real traffic between the two pods over the bridge.
	l, err := podA.Listen(t.Context(), "tcp", net.JoinHostPort(ipA, "7000"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		if c, err := l.Accept(); err == nil {
			io.WriteString(c, "from a\n")
			c.Close()
		}
	}()
	c, err := podB.DialContext(t.Context(), "tcp", net.JoinHostPort(ipA, "7000"))
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(c)
	c.Close()
	if string(got) != "from a\n" {
		t.Errorf("b to a over the bridge: got %q, want %q", got, "from a\n")
	}

	// DEL tells the agent, and is idempotent, also with the agent gone.
	delArgs := &skel.CmdArgs{ContainerID: podA.Name(), Netns: podA.Path(), IfName: "eth0",
		Args: "K8S_POD_NAMESPACE=shop;K8S_POD_NAME=a", StdinData: confs["a"]}
	for i := range 2 {
		if err := p.Del(delArgs); err != nil {
			t.Errorf("DEL #%d: got %v, want nil", i+1, err)
		}
	}
	if len(agent.dels) != 2 || agent.dels[0].Name != "a" {
		t.Errorf("agent DEL requests: got %+v, want two for shop/a", agent.dels)
	}
	if err := p.Check(delArgs); err != nil {
		t.Errorf("CHECK: got %v, want nil", err)
	}
}

// TestPluginRefusals: what must fail fails with a clear error and the CNI
// spec's code, and what need not, does not, and passes the primary's
// result on.
func TestPluginRefusals(t *testing.T) {
	dir := t.TempDir()
	ambient := map[string]string{enrolment.LabelDataplaneMode: enrolment.ModeAmbient}
	p := &Plugin{Labels: labels(map[string][2]map[string]string{
		"mesh": {nil, ambient}, "plain": {nil, nil}, "optout": {map[string]string{enrolment.LabelDataplaneMode: enrolment.ModeNone}, ambient},
	}), Timeout: 2 * time.Second, Log: slog.New(slog.NewTextHandler(t.Output(), nil))}
	prev := `{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","sandbox":"/x"}],"ips":[{"address":"10.1.0.5/24","interface":0}]}`
	noAgent := filepath.Join(dir, "no-agent.sock")
	kubeconfig := filepath.Join(dir, "missing-kubeconfig")
	// conf is the plugin's config with the given fields after name and type.
	conf := func(fields string) []byte {
		return []byte(`{"cniVersion":"1.0.0","name":"n","type":"ambit-cni"` + fields + "}")
	}
	good := fmt.Sprintf(`,"agent_socket":%q,"kubeconfig":%q`, noAgent, kubeconfig)
	chained := conf(good + `,"prevResult":` + prev)
	pod := func(name string) string { return "K8S_POD_NAMESPACE=ns;K8S_POD_NAME=" + name }
	tests := []struct {
		name     string
		cniArgs  string
		stdin    []byte
		wantCode uint   // 0 for success, with prev printed
		wantMsg  string // in the error
	}{
		{"mesh pod, agent unreachable", pod("mesh"), chained, types.ErrTryAgainLater, "redirection could not be set up"},
		{"plain pod, agent unreachable", pod("plain"), chained, 0, ""},
		{"opted-out pod, agent unreachable", pod("optout"), chained, 0, ""},
		{"labels unknown (apiserver down)", pod("unknown"), chained, types.ErrTryAgainLater, "decide enrolment of pod ns/unknown"},
		{"container outside Kubernetes", "", chained, 0, ""},
		{"container outside Kubernetes, other CNI_ARGS", "IgnoreUnknown=1;FOO=bar", chained, 0, ""},
		{"not chained", pod("mesh"), conf(good), types.ErrInvalidNetworkConfig, "must be chained after a primary plugin"},
		{"garbage config", pod("mesh"), []byte(`{"cniVersion":`), types.ErrDecodingFailure, "decode ambit-cni config"},
		{"agent_socket not a string", pod("mesh"), conf(`,"agent_socket":5,"kubeconfig":"/k","prevResult":` + prev), types.ErrDecodingFailure, "decode ambit-cni config"},
		{"prevResult undecodable", pod("mesh"), conf(good + `,"prevResult":{"cniVersion":"1.0.0","ips":[{"address":"10.1.0.5"}]}`), types.ErrDecodingFailure, "decode ambit-cni prevResult"},
		{"no agent socket", pod("mesh"), conf(`,"kubeconfig":"/k","prevResult":` + prev), types.ErrInvalidNetworkConfig, "no agent_socket"},
		{"no kubeconfig", pod("mesh"), conf(fmt.Sprintf(`,"agent_socket":%q,"prevResult":`, noAgent) + prev), types.ErrInvalidNetworkConfig, "no kubeconfig"},
		{"CNI_ARGS malformed", "K8S_POD_NAMESPACE=ns;K8S_POD_NAME", chained, types.ErrInvalidEnvironmentVariables, "parse CNI_ARGS"},
		{"pod name without namespace", "K8S_POD_NAME=mesh", chained, types.ErrInvalidEnvironmentVariables, `K8S_POD_NAMESPACE="" and K8S_POD_NAME="mesh"`},
		{"pod name with empty namespace", "K8S_POD_NAMESPACE=;K8S_POD_NAME=mesh", chained, types.ErrInvalidEnvironmentVariables, `K8S_POD_NAMESPACE="" and K8S_POD_NAME="mesh"`},
		{"namespace without pod name", "K8S_POD_NAMESPACE=ns", chained, types.ErrInvalidEnvironmentVariables, `K8S_POD_NAMESPACE="ns" and K8S_POD_NAME=""`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			args := &skel.CmdArgs{ContainerID: "c1", Netns: "/var/run/netns/x", IfName: "eth0", Args: tc.cniArgs, StdinData: tc.stdin}
			out, err := capture(t, func() error { return p.Add(args) })
			if tc.wantCode == 0 {
				if err != nil {
					t.Fatalf("ADD: got %v, want success", err)
				}
				var got, want map[string]any
				if err := json.Unmarshal([]byte(out), &got); err != nil {
					t.Fatalf("ADD output %q: %v", out, err)
				}
				json.Unmarshal([]byte(prev), &want)
				if diff := cmp.Diff(want, got); diff != "" {
					t.Errorf("ADD result: got the primary's result changed (-want +got):\n%s", diff)
				}
				return
			}
			var terr *types.Error
			if !errors.As(err, &terr) || terr.Code != tc.wantCode || !strings.Contains(err.Error(), tc.wantMsg) {
				t.Errorf("ADD: got error %#v, want code %d with %q", err, tc.wantCode, tc.wantMsg)
			}
		})
	}
	// STATUS: not available without the kubeconfig the agent writes.
	status := &skel.CmdArgs{StdinData: conf(good)}
	err := p.Status(status)
	var terr *types.Error
	if !errors.As(err, &terr) || terr.Code != types.ErrPluginNotAvailable {
		t.Errorf("STATUS without kubeconfig: got %v, want error code %d", err, types.ErrPluginNotAvailable)
	}
	if err := os.WriteFile(kubeconfig, []byte("{}"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := p.Status(status); err != nil {
		t.Errorf("STATUS with kubeconfig: got %v, want nil", err)
	}
}

// TestPluginDel: DEL succeeds whatever it cannot decode, and tells the
// agent what it can: the pod without its addresses when only the
// prevResult is undecodable; nothing, and says why, when the config is.
func TestPluginDel(t *testing.T) {
	agent := startAgent(t, t.TempDir())
	prev := `{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","sandbox":"/x"}],"ips":[{"address":"10.1.0.5/24","interface":0}]}`
	conf := func(fields string) []byte {
		return []byte(`{"cniVersion":"1.0.0","name":"n","type":"ambit-cni"` + fields + "}")
	}
	socket := fmt.Sprintf(`,"agent_socket":%q`, agent.socket)
	good := socket + `,"kubeconfig":"/k"`
	pod := "K8S_POD_NAMESPACE=ns;K8S_POD_NAME=a;K8S_POD_UID=u1"
	told := func(ips ...string) []PodRequest {
		return []PodRequest{{Namespace: "ns", Name: "a", UID: "u1", ContainerID: "c1", IPs: ips}}
	}
	tests := []struct {
		name    string
		cniArgs string
		stdin   []byte
		want    []PodRequest // the agent's DEL requests
		wantLog string       // "" for none
	}{
		{"prevResult", pod, conf(good + `,"prevResult":` + prev), told("10.1.0.5"), ""},
		{"no prevResult", pod, conf(good), told(), ""},
		{"no kubeconfig (DEL needs none)", pod, conf(socket + `,"prevResult":` + prev), told("10.1.0.5"), ""},
		{"prevResult undecodable", pod, conf(good + `,"prevResult":{"cniVersion":"1.0.0","ips":[{"address":"10.1.0.5"}]}`), told(), "prevResult ignored"},
		{"prevResult of an unknown version", pod, conf(good + `,"prevResult":{"cniVersion":"9.9.9"}`), told(), "prevResult ignored"},
		{"garbage config", pod, []byte(`{"cniVersion":`), nil, "config ignored"},
		{"no agent socket", pod, conf(`,"kubeconfig":"/k","prevResult":` + prev), nil, "config ignored"},
		{"CNI_ARGS malformed", "K8S_POD_NAME", conf(good + `,"prevResult":` + prev), []PodRequest{{ContainerID: "c1", IPs: []string{"10.1.0.5"}}}, "CNI_ARGS ignored"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			agent.mu.Lock()
			agent.dels = nil
			agent.mu.Unlock()
			var logs strings.Builder
			p := &Plugin{Labels: labels(nil), Timeout: 2 * time.Second, Log: slog.New(slog.NewTextHandler(&logs, nil))}
			args := &skel.CmdArgs{ContainerID: "c1", Netns: "/var/run/netns/x", IfName: "eth0", Args: tc.cniArgs, StdinData: tc.stdin}
			out, err := capture(t, func() error { return p.Del(args) })
			if err != nil || out != "" {
				t.Errorf("DEL: got error %v and output %q, want success and no output", err, out)
			}
			agent.mu.Lock()
			got := agent.dels
			agent.mu.Unlock()
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("agent DEL requests (-want +got):\n%s", diff)
			}
			switch {
			case tc.wantLog == "" && logs.Len() != 0:
				t.Errorf("DEL log: got %q, want none", logs.String())
			case !strings.Contains(logs.String(), tc.wantLog):
				t.Errorf("DEL log: got %q, want one with %q", logs.String(), tc.wantLog)
			}
		})
	}
}
