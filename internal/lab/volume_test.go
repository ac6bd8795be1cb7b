package lab

import (
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestDownwardAPIVolume: the stand-in writes a downward API volume as a
// kubelet does (labels one key="value" a line, sorted; single fields as
// they are), and refuses what it cannot write.
func TestDownwardAPIVolume(t *testing.T) {
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{
		Name: "wp-1", Namespace: "shop",
		Labels:      map[string]string{"gateway.networking.k8s.io/gateway-name": "waypoint", "app": `a "b"`},
		Annotations: map[string]string{"x": "y"},
	}}
	rt := &podRuntime{dir: t.TempDir(), ip: netip.MustParseAddr("10.244.1.9")}
	v := corev1.Volume{Name: "podinfo", VolumeSource: corev1.VolumeSource{DownwardAPI: &corev1.DownwardAPIVolumeSource{Items: []corev1.DownwardAPIVolumeFile{
		{Path: "labels", FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.labels"}},
		{Path: "annotations", FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.annotations"}},
		{Path: "sub/name", FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}},
		{Path: "ip", FieldRef: &corev1.ObjectFieldSelector{FieldPath: "status.podIP"}},
	}}}}
	k := &Kubelet{}
	if err := k.writeVolume(t.Context(), pod, rt, v); err != nil {
		t.Fatal(err)
	}
	for path, want := range map[string]string{
		"labels":      "app=\"a \\\"b\\\"\"\ngateway.networking.k8s.io/gateway-name=\"waypoint\"",
		"annotations": `x="y"`,
		"sub/name":    "wp-1",
		"ip":          "10.244.1.9",
	} {
		got, err := os.ReadFile(filepath.Join(rt.dir, "volumes", "podinfo", path))
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != want {
			t.Errorf("volume file %s: got %q, want %q", path, got, want)
		}
	}

	bad := corev1.Volume{Name: "res", VolumeSource: corev1.VolumeSource{DownwardAPI: &corev1.DownwardAPIVolumeSource{Items: []corev1.DownwardAPIVolumeFile{
		{Path: "cpu", ResourceFieldRef: &corev1.ResourceFieldSelector{Resource: "limits.cpu"}},
	}}}}
	if err := k.writeVolume(t.Context(), pod, rt, bad); err == nil {
		t.Error("downward API volume with a resourceFieldRef: got nil error, want it refused")
	}
}
