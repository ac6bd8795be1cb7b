package agent

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/rest"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/clientcmd"
)

// TestInClusterPluginKubeconfig: the plugin's kubeconfig carries the
// agent's server, CA and current token itself, and the agent rewrites it
// when the kubelet rotates the token.
func TestInClusterPluginKubeconfig(t *testing.T) {
	dir := t.TempDir()
	tokenFile, caFile := filepath.Join(dir, "token"), filepath.Join(dir, "ca.crt")
	write := func(path, data string) {
		t.Helper()
		if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(tokenFile, "first-token\n")
	write(caFile, "the CA")
	rc := &rest.Config{Host: "https://10.96.0.1:443", BearerToken: "first-token", BearerTokenFile: tokenFile,
		TLSClientConfig: rest.TLSClientConfig{CAFile: caFile}}
	a := &Agent{cfg: Config{PluginKubeconfig: InClusterPluginKubeconfig(rc)}, log: slog.New(slog.DiscardHandler)}
	out := filepath.Join(dir, PluginKubeconfigName)

	check := func(wantToken string) {
		t.Helper()
		if err := a.writePluginKubeconfig(out); err != nil {
			t.Fatal(err)
		}
		cfg, err := clientcmd.LoadFromFile(out)
		if err != nil {
			t.Fatal(err)
		}
		ctx := cfg.Contexts[cfg.CurrentContext]
		if ctx == nil {
			t.Fatalf("kubeconfig: no current context %q", cfg.CurrentContext)
		}
		cl, user := cfg.Clusters[ctx.Cluster], cfg.AuthInfos[ctx.AuthInfo]
		if cl.Server != rc.Host || string(cl.CertificateAuthorityData) != "the CA" || cl.CertificateAuthority != "" {
			t.Errorf("cluster: got server %q, CA data %q, CA file %q; want %s, the CA itself, no file", cl.Server, cl.CertificateAuthorityData, cl.CertificateAuthority, rc.Host)
		}
		if user.Token != wantToken || user.TokenFile != "" {
			t.Errorf("user: got token %q, token file %q; want %q, no file", user.Token, user.TokenFile, wantToken)
		}
		if st, err := os.Stat(out); err != nil || st.Mode().Perm() != 0o600 {
			t.Errorf("kubeconfig mode: got %v (%v), want 0600", st.Mode(), err)
		}
	}
	check("first-token")
	write(tokenFile, "rotated-token\n")
	check("rotated-token")

	// Without a token there is nothing to give the plugin; the old file
	// stays.
	write(tokenFile, "")
	rc.BearerToken = ""
	if err := a.writePluginKubeconfig(out); err == nil {
		t.Error("empty token: got no error, want one")
	}
	check2, _ := clientcmd.LoadFromFile(out)
	if got := check2.AuthInfos["ambit-cni"].Token; got != "rotated-token" {
		t.Errorf("after a failed renewal: got token %q, want the last good one", got)
	}
}

func TestPluginKubeconfigFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "kc")
	if _, err := PluginKubeconfigFile(path)(); err == nil {
		t.Error("missing file: got no error, want one")
	}
	if err := os.WriteFile(path, []byte("kc"), 0o600); err != nil {
		t.Fatal(err)
	}
	if got, err := PluginKubeconfigFile(path)(); err != nil || string(got) != "kc" {
		t.Errorf("got %q, %v; want the file", got, err)
	}
}

// TestPluginTokens: the plugin's token is requested for its own service
// account, bound to the node, and renewed once half its life has
// passed; a renewal that fails keeps the token while it is valid, and
// then the source falls back to the agent's own credentials until a
// request succeeds again.
func TestPluginTokens(t *testing.T) {
	client := fake.NewClientset()
	var (
		requests int
		fail     bool
		lastSpec authenticationv1.TokenRequestSpec
		lastName string
	)
	start := time.Date(2026, 12, 4, 12, 0, 0, 0, time.UTC)
	now := start
	client.PrependReactor("create", "serviceaccounts", func(action k8stesting.Action) (bool, runtime.Object, error) {
		ca, ok := action.(k8stesting.CreateAction)
		if !ok || action.GetSubresource() != "token" {
			return false, nil, nil
		}
		requests++
		if fail {
			return true, nil, errors.New("apiserver down")
		}
		tr := ca.GetObject().(*authenticationv1.TokenRequest)
		lastSpec, lastName = tr.Spec, ca.(k8stesting.CreateActionImpl).Name
		tr = tr.DeepCopy()
		tr.Status.Token = fmt.Sprintf("token-%d", requests)
		tr.Status.ExpirationTimestamp = metav1.NewTime(now.Add(time.Duration(*tr.Spec.ExpirationSeconds) * time.Second))
		return true, tr, nil
	})
	sa := types.NamespacedName{Namespace: "ambit-system", Name: "ambit-cni-plugin"}
	p := &pluginTokens{client: client, sa: sa, node: "node-a", now: func() time.Time { return now }}
	get := func(at time.Duration, want string, wantRequests int) {
		t.Helper()
		now = start.Add(at)
		got, err := p.get()
		if got != want || (err != nil) != (want == "") {
			t.Errorf("at %v: got %q, %v; want %q", at, got, err, want)
		}
		if requests != wantRequests {
			t.Errorf("at %v: %d token requests, want %d", at, requests, wantRequests)
		}
	}
	get(0, "token-1", 1)
	if lastName != sa.Name || lastSpec.BoundObjectRef == nil || lastSpec.BoundObjectRef.Kind != "Node" || lastSpec.BoundObjectRef.Name != "node-a" ||
		lastSpec.ExpirationSeconds == nil || *lastSpec.ExpirationSeconds != int64(PluginTokenLifetime/time.Second) {
		t.Errorf("token request: got account %q, spec %+v; want %q bound to Node node-a for %v", lastName, lastSpec, sa.Name, PluginTokenLifetime)
	}
	get(29*time.Minute, "token-1", 1)
	get(31*time.Minute, "token-2", 2)
	fail = true
	get(62*time.Minute, "token-2", 3) // past its half life: renewal fails, still valid
	get(92*time.Minute, "", 4)        // expired, and no new one

	// The source: the kubeconfig carries the token; without one, the
	// agent's own credentials.
	rc := &rest.Config{Host: "https://10.96.0.1:443", TLSClientConfig: rest.TLSClientConfig{CAData: []byte("the CA")}}
	fallback := func() ([]byte, error) { return []byte("agent's own"), nil }
	var logged strings.Builder
	src := TokenRequestPluginKubeconfig(client, rc, sa, "node-a", fallback, slog.New(slog.NewTextHandler(&logged, nil)))
	for range 2 {
		if b, err := src(); err != nil || string(b) != "agent's own" {
			t.Errorf("source with the apiserver refusing: got %q, %v; want the fallback's", b, err)
		}
	}
	if n := strings.Count(logged.String(), "level=WARN"); n != 1 {
		t.Errorf("warnings over two failing calls: got %d, want 1 (once until a request succeeds):\n%s", n, logged.String())
	}
	fail = false
	b, err := src()
	if err != nil {
		t.Fatalf("source: %v", err)
	}
	kc, err := clientcmd.Load(b)
	if err != nil {
		t.Fatalf("load the plugin's kubeconfig: %v", err)
	}
	if got := kc.AuthInfos["ambit-cni"].Token; got != fmt.Sprintf("token-%d", requests) {
		t.Errorf("plugin kubeconfig token: got %q, want token-%d", got, requests)
	}
	if got := string(kc.Clusters["cluster"].CertificateAuthorityData); got != "the CA" {
		t.Errorf("plugin kubeconfig CA: got %q, want %q", got, "the CA")
	}
}
