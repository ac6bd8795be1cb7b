package labmesh

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	admissionv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/ambitmesh/ambit/internal/lab"
)

// RenderedChart is the Helm chart rendered with its default values,
// relative to the repository root; deploy/charts/charttest keeps it
// current (go test -update there) and fails when it drifts.
const RenderedChart = "e2e/testdata/helm/ambit.yaml"

var yamlComments = regexp.MustCompile(`(?m)^\s*#.*$`)

// ChartObjects decodes the rendered chart at path into typed objects.
func ChartObjects(path string) ([]runtime.Object, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read rendered chart: %w", err)
	}
	dec := scheme.Codecs.UniversalDeserializer()
	var objs []runtime.Object
	for doc := range strings.SplitSeq(string(data), "\n---\n") {
		if strings.TrimSpace(yamlComments.ReplaceAllString(doc, "")) == "" {
			continue
		}
		obj, _, err := dec.Decode([]byte(doc), nil, nil)
		if err != nil {
			return nil, fmt.Errorf("decode %s: %w", path, err)
		}
		objs = append(objs, obj)
	}
	return objs, nil
}

// ApplyAccess creates the chart's service accounts, RBAC, Services,
// admission policies and ConfigMaps (istiod's MeshConfig); objects that exist are left as they are. Not its
// Deployment and DaemonSets: the lab runs the programs itself.
func ApplyAccess(ctx context.Context, c kubernetes.Interface, objs []runtime.Object) error {
	co := metav1.CreateOptions{}
	for _, o := range objs {
		var err error
		switch v := o.(type) {
		case *corev1.ServiceAccount:
			_, err = c.CoreV1().ServiceAccounts(v.Namespace).Create(ctx, v, co)
		case *corev1.Service:
			_, err = c.CoreV1().Services(v.Namespace).Create(ctx, v, co)
		case *corev1.ConfigMap:
			_, err = c.CoreV1().ConfigMaps(v.Namespace).Create(ctx, v, co)
		case *rbacv1.ClusterRole:
			_, err = c.RbacV1().ClusterRoles().Create(ctx, v, co)
		case *rbacv1.ClusterRoleBinding:
			_, err = c.RbacV1().ClusterRoleBindings().Create(ctx, v, co)
		case *rbacv1.Role:
			_, err = c.RbacV1().Roles(v.Namespace).Create(ctx, v, co)
		case *rbacv1.RoleBinding:
			_, err = c.RbacV1().RoleBindings(v.Namespace).Create(ctx, v, co)
		case *admissionv1.ValidatingAdmissionPolicy:
			_, err = c.AdmissionregistrationV1().ValidatingAdmissionPolicies().Create(ctx, v, co)
		case *admissionv1.ValidatingAdmissionPolicyBinding:
			_, err = c.AdmissionregistrationV1().ValidatingAdmissionPolicyBindings().Create(ctx, v, co)
		case *appsv1.Deployment, *appsv1.DaemonSet:
			continue
		default:
			return fmt.Errorf("apply chart: %T: no way to apply it", o)
		}
		if err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("apply chart: %T: %w", o, err)
		}
	}
	return nil
}

// TokenKubeconfig writes a kubeconfig whose only credential is token, for
// processes inside the lab.
func TokenKubeconfig(l *lab.Lab, name, token string) (string, error) {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["lab"] = &clientcmdapi.Cluster{Server: lab.APIServerURL(), CertificateAuthority: l.RESTConfig.CAFile}
	cfg.AuthInfos[name] = &clientcmdapi.AuthInfo{Token: token}
	cfg.Contexts["lab"] = &clientcmdapi.Context{Cluster: "lab", AuthInfo: name}
	cfg.CurrentContext = "lab"
	path := filepath.Join(l.Dir, name+".kubeconfig")
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		return "", fmt.Errorf("write kubeconfig: %w", err)
	}
	return path, nil
}
