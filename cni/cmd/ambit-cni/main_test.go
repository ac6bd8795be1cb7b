package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
)

// TestBinaryErrors runs the binary as a runtime does: what is refused
// exits 1 with the CNI spec's error code on stdout, skel's refusals
// included; a DEL exits 0 with nothing on stdout whatever its input, and
// says on stderr what it ignored.
func TestBinaryErrors(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "ambit-cni")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	prev := `{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","sandbox":"/x"}],"ips":[{"address":"10.1.0.5/24","interface":0}]}`
	good := `{"cniVersion":"1.0.0","name":"n","type":"ambit-cni","agent_socket":"` + filepath.Join(dir, "no-agent.sock") + `","kubeconfig":"/k","prevResult":` + prev + `}`
	pod := "K8S_POD_NAMESPACE=ns;K8S_POD_NAME=a"
	tests := []struct {
		name        string
		cmd         string
		cniArgs     string
		containerID string
		stdin       string
		wantCode    uint   // 0 for exit 0 and nothing on stdout
		wantStderr  string // "" for none
	}{
		{"ADD, garbage config", "ADD", pod, "c1", `{"cniVersion":`, types.ErrDecodingFailure, ""},
		{"ADD, agent_socket not a string", "ADD", pod, "c1", `{"cniVersion":"1.0.0","name":"n","type":"ambit-cni","agent_socket":5}`, types.ErrDecodingFailure, ""},
		{"ADD, no agent_socket", "ADD", pod, "c1", `{"cniVersion":"1.0.0","name":"n","type":"ambit-cni","kubeconfig":"/k"}`, types.ErrInvalidNetworkConfig, ""},
		{"ADD, no network name", "ADD", pod, "c1", `{"cniVersion":"1.0.0","type":"ambit-cni"}`, types.ErrInvalidNetworkConfig, ""},
		{"ADD, unsupported version", "ADD", pod, "c1", `{"cniVersion":"9.9.9","name":"n","type":"ambit-cni"}`, types.ErrIncompatibleCNIVersion, ""},
		{"ADD, pod name without namespace", "ADD", "K8S_POD_NAME=a", "c1", good, types.ErrInvalidEnvironmentVariables, ""},
		{"DEL", "DEL", pod, "c1", good, 0, ""},
		{"DEL, garbage config", "DEL", pod, "c1", `{"cniVersion":`, 0, "DEL: error ignored"},
		{"DEL, no network name", "DEL", pod, "c1", `{"cniVersion":"1.0.0","type":"ambit-cni"}`, 0, "DEL: error ignored"},
		{"DEL, unsupported version", "DEL", pod, "c1", `{"cniVersion":"9.9.9","name":"n","type":"ambit-cni"}`, 0, "DEL: error ignored"},
		{"DEL, no agent_socket", "DEL", pod, "c1", `{"cniVersion":"1.0.0","name":"n","type":"ambit-cni"}`, 0, "DEL: config ignored"},
		{"DEL, prevResult undecodable", "DEL", pod, "c1", strings.Replace(good, "10.1.0.5/24", "10.1.0.5", 1), 0, "DEL: prevResult ignored"},
		{"DEL, no CNI_CONTAINERID", "DEL", pod, "", good, 0, "DEL: error ignored"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cmd := exec.Command(bin)
			cmd.Env = []string{"CNI_COMMAND=" + tc.cmd, "CNI_CONTAINERID=" + tc.containerID, "CNI_NETNS=/var/run/netns/none",
				"CNI_IFNAME=eth0", "CNI_PATH=/opt/cni/bin", "CNI_ARGS=" + tc.cniArgs}
			cmd.Stdin = strings.NewReader(tc.stdin)
			var stdout, stderr bytes.Buffer
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			err := cmd.Run()
			var exit *exec.ExitError
			if err != nil && !errors.As(err, &exit) {
				t.Fatal(err)
			}
			if tc.wantCode == 0 {
				if err != nil || stdout.Len() != 0 {
					t.Errorf("%s: got %v and stdout %q, want exit 0 and nothing", tc.cmd, err, stdout.String())
				}
			} else {
				var got types.Error
				if jerr := json.Unmarshal(stdout.Bytes(), &got); exit == nil || exit.ExitCode() != 1 || jerr != nil || got.Code != tc.wantCode {
					t.Errorf("%s: got %v and stdout %q, want exit 1 and error code %d", tc.cmd, err, stdout.String(), tc.wantCode)
				}
			}
			switch {
			case tc.wantStderr == "" && stderr.Len() != 0:
				t.Errorf("%s stderr: got %q, want nothing", tc.cmd, stderr.String())
			case !strings.Contains(stderr.String(), tc.wantStderr):
				t.Errorf("%s stderr: got %q, want %q in it", tc.cmd, stderr.String(), tc.wantStderr)
			}
		})
	}
}
