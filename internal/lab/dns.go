package lab

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
)

var getOpts = metav1.GetOptions{}

const coreDNSUser = "ambit-lab:coredns"

// startDNS runs CoreDNS on the control-plane node, the way kubeadm clusters
// run it but outside a pod: the kube-system/kube-dns Service has the usual
// ClusterIP and an EndpointSlice that points at the control-plane node, so
// pods reach it through kube-proxy like any Service. CoreDNS has no
// upstream: names outside the cluster do not resolve, and no query leaves
// the lab.
func (l *Lab) startDNS(ctx context.Context) error {
	c := l.Client
	role := &rbacv1.ClusterRole{
		ObjectMeta: metav1.ObjectMeta{Name: coreDNSUser},
		Rules: []rbacv1.PolicyRule{
			{APIGroups: []string{""}, Resources: []string{"services", "pods", "namespaces", "endpoints"}, Verbs: []string{"list", "watch"}},
			{APIGroups: []string{"discovery.k8s.io"}, Resources: []string{"endpointslices"}, Verbs: []string{"list", "watch"}},
		},
	}
	if _, err := c.RbacV1().ClusterRoles().Create(ctx, role, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create coredns cluster role: %w", err)
	}
	binding := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: coreDNSUser},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: coreDNSUser},
		Subjects:   []rbacv1.Subject{{APIGroup: "rbac.authorization.k8s.io", Kind: "User", Name: coreDNSUser}},
	}
	if _, err := c.RbacV1().ClusterRoleBindings().Create(ctx, binding, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create coredns cluster role binding: %w", err)
	}
	cert, key, err := l.pki.issue("coredns", coreDNSUser, nil, nil, nil)
	if err != nil {
		return err
	}
	kubeconfig := filepath.Join(l.Dir, "coredns.kubeconfig")
	if err := l.pki.kubeconfig(kubeconfig, fmt.Sprintf("https://127.0.0.1:%d", apiPort), cert, key); err != nil {
		return err
	}
	corefile := filepath.Join(l.Dir, "Corefile")
	conf := fmt.Sprintf(`.:53 {
    errors
    ready 127.0.0.1:8181
    kubernetes %s in-addr.arpa ip6.arpa {
        kubeconfig %s lab
        pods insecure
        ttl 5
    }
    loop
}
`, ClusterDomain, kubeconfig)
	if err := os.WriteFile(corefile, []byte(conf), 0o644); err != nil {
		return fmt.Errorf("write Corefile: %w", err)
	}
	proc, err := startProcess(l.ID, filepath.Join(l.Dir, "logs"), "coredns", l.cp, nil, l.cfg.Binaries.CoreDNS, "-conf", corefile)
	if err != nil {
		return err
	}
	l.procs = append(l.procs, proc)

	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "kube-dns", Namespace: "kube-system", Labels: map[string]string{"k8s-app": "kube-dns"}},
		Spec: corev1.ServiceSpec{
			ClusterIP: DNSServiceIP,
			Ports: []corev1.ServicePort{
				{Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP, TargetPort: intstr.FromInt32(53)},
				{Name: "dns-tcp", Port: 53, Protocol: corev1.ProtocolTCP, TargetPort: intstr.FromInt32(53)},
			},
		},
	}
	if _, err := c.CoreV1().Services("kube-system").Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create kube-dns service: %w", err)
	}
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{
			Name: "kube-dns-control-plane", Namespace: "kube-system",
			Labels: map[string]string{
				discoveryv1.LabelServiceName: "kube-dns",
				discoveryv1.LabelManagedBy:   "lab.ambit.dev",
			},
		},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints: []discoveryv1.Endpoint{{
			Addresses:  []string{controlPlaneIP.String()},
			Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)},
		}},
		Ports: []discoveryv1.EndpointPort{
			{Name: ptr.To("dns"), Port: ptr.To[int32](53), Protocol: ptr.To(corev1.ProtocolUDP)},
			{Name: ptr.To("dns-tcp"), Port: ptr.To[int32](53), Protocol: ptr.To(corev1.ProtocolTCP)},
		},
	}
	if _, err := c.DiscoveryV1().EndpointSlices("kube-system").Create(ctx, slice, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create kube-dns endpoint slice: %w", err)
	}
	return waitFor(ctx, "coredns", 60*time.Second, proc, func(ctx context.Context) error {
		return httpGet(ctx, l.cp, nil, "http://127.0.0.1:8181/ready")
	})
}
