package gateway

import (
	"encoding/json"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/strategicpatch"
	"k8s.io/utils/ptr"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	"sigs.k8s.io/yaml"

	"github.com/ambitmesh/ambit/internal/enrolment"
	"github.com/ambitmesh/ambit/internal/mesh"
)

// Labels and annotations of what the controller deploys, Istio's names.
const (
	// LabelGatewayName and LabelIstioGatewayName name the Gateway an object
	// was made for; the first selects the waypoint's pods.
	LabelGatewayName      = "gateway.networking.k8s.io/gateway-name"
	LabelIstioGatewayName = "istio.io/gateway-name"
	LabelGatewayClassName = "gateway.networking.k8s.io/gateway-class-name"
	// LabelManaged with value ManagedMesh marks every object the waypoint
	// controller made.
	LabelManaged = "gateway.istio.io/managed"
	ManagedMesh  = "istio.io-mesh-controller"
	// LabelDefaultsForClass on a ConfigMap in istiod's namespace makes it
	// the customisation of every Gateway of the class it names.
	LabelDefaultsForClass = "gateway.istio.io/defaults-for-class"
	// annotationRedirection is the node agent's annotation; Istio sets it
	// to "disabled" on waypoint pods.
	annotationRedirection = "ambient.istio.io/redirection"
	// FieldManager is the controller's field manager in server-side
	// apply.
	FieldManager = "istio.io-mesh-controller"
)

// The keys of a customisation ConfigMap (Istio 1.26's format): each a
// partial object in YAML, merged (strategic merge patch) over the one
// the controller generates. An autoscaler and a disruption budget are
// made only when asked for.
const (
	KeyDeployment              = "deployment"
	KeyService                 = "service"
	KeyServiceAccount          = "serviceAccount"
	KeyHorizontalPodAutoscaler = "horizontalPodAutoscaler"
	KeyPodDisruptionBudget     = "podDisruptionBudget"
)

var customisationKeys = []string{KeyDeployment, KeyService, KeyServiceAccount, KeyHorizontalPodAutoscaler, KeyPodDisruptionBudget}

// Ports of a waypoint, Istio's.
const (
	StatusPort  = 15021
	MetricsPort = 15020
)

// Paths inside a waypoint's container, as ztunnel's chart mounts them.
const (
	tokenDir    = "/var/run/secrets/tokens"
	tokenFile   = tokenDir + "/istio-token"
	rootCertDir = "/var/run/secrets/istio"
	rootCert    = rootCertDir + "/root-cert.pem"
	// tokenLifetime is the istio-ca token's, as ztunnel's.
	tokenLifetime = 43200
	// gracePeriod lets open connections finish, as Istio 1.28's waypoints.
	gracePeriod = 30
	// proxyUID runs the waypoint, Istio's proxy user.
	proxyUID = 1337
)

// DeployConfig is what every waypoint Deployment shares.
type DeployConfig struct {
	// Image of the waypoint proxy; ImagePullPolicy Kubernetes' default
	// when empty.
	Image, ImagePullPolicy string
	// IstiodAddress is istiod's TLS port (xDS and CA), host:port.
	IstiodAddress string
	// TrustDomain, ClusterID and DomainSuffix as istiod's.
	TrustDomain, ClusterID, DomainSuffix string
}

// rendered are the objects of one waypoint, as JSON for server-side
// apply; HPA and PDB nil when not asked for.
type rendered struct {
	serviceAccount, service, deployment, hpa, pdb []byte
}

// customisation is the merged content of the class defaults and the
// Gateway's parametersRef ConfigMap: per key, the overlays in order.
type customisation map[string][]string

// add appends a ConfigMap's overlays; an unknown key is an error (a typo
// would otherwise be silently ignored).
func (c customisation) add(cm *corev1.ConfigMap) error {
	for k, v := range cm.Data {
		if !slices.Contains(customisationKeys, k) {
			return fmt.Errorf("configmap %s/%s: unknown key %q, want one of %s", cm.Namespace, cm.Name, k, strings.Join(customisationKeys, ", "))
		}
		c[k] = append(c[k], v)
	}
	return nil
}

// labels are the labels of every object of a waypoint: the Gateway's
// infrastructure labels, then the controller's own (which win).
func labels(gw *gatewayv1.Gateway) map[string]string {
	l := map[string]string{}
	if inf := gw.Spec.Infrastructure; inf != nil {
		for k, v := range inf.Labels {
			l[string(k)] = string(v)
		}
	}
	l[LabelManaged] = ManagedMesh
	l[LabelGatewayName] = gw.Name
	l[LabelIstioGatewayName] = gw.Name
	l[LabelGatewayClassName] = string(gw.Spec.GatewayClassName)
	// Waypoints speak HBONE themselves: never captured by the node agent,
	// never served by ztunnel.
	l[enrolment.LabelDataplaneMode] = enrolment.ModeNone
	return l
}

func annotations(gw *gatewayv1.Gateway) map[string]string {
	a := map[string]string{}
	if inf := gw.Spec.Infrastructure; inf != nil {
		for k, v := range inf.Annotations {
			a[string(k)] = string(v)
		}
	}
	return a
}

func objectMeta(gw *gatewayv1.Gateway) metav1.ObjectMeta {
	return metav1.ObjectMeta{
		Name: gw.Name, Namespace: gw.Namespace,
		Labels: labels(gw), Annotations: annotations(gw),
		OwnerReferences: []metav1.OwnerReference{{
			APIVersion: gatewayv1.GroupVersion.String(), Kind: "Gateway", Name: gw.Name, UID: gw.UID,
		}},
	}
}

// render generates a waypoint's objects and merges the customisation
// over them. Names, namespace, owner and the controller's labels are
// set again after the merge: a customisation cannot move or disown them.
func render(gw *gatewayv1.Gateway, cfg DeployConfig, cust customisation) (rendered, error) {
	var out rendered
	var err error
	sa, svc, d := WaypointObjects(gw, cfg)
	if out.serviceAccount, err = finish(sa, cust[KeyServiceAccount], gw); err != nil {
		return out, err
	}
	if out.service, err = finish(svc, cust[KeyService], gw); err != nil {
		return out, err
	}
	if len(cust[KeyHorizontalPodAutoscaler]) > 0 {
		// The autoscaler owns the replica count.
		d.Spec.Replicas = nil
	}
	if out.deployment, err = finish(d, cust[KeyDeployment], gw); err != nil {
		return out, err
	}
	if len(cust[KeyHorizontalPodAutoscaler]) > 0 {
		hpa := &autoscalingv2.HorizontalPodAutoscaler{
			TypeMeta:   metav1.TypeMeta{APIVersion: "autoscaling/v2", Kind: "HorizontalPodAutoscaler"},
			ObjectMeta: objectMeta(gw),
			Spec: autoscalingv2.HorizontalPodAutoscalerSpec{
				ScaleTargetRef: autoscalingv2.CrossVersionObjectReference{APIVersion: "apps/v1", Kind: "Deployment", Name: gw.Name},
				MaxReplicas:    1,
			},
		}
		if out.hpa, err = finish(hpa, cust[KeyHorizontalPodAutoscaler], gw); err != nil {
			return out, err
		}
	}
	if len(cust[KeyPodDisruptionBudget]) > 0 {
		pdb := &policyv1.PodDisruptionBudget{
			TypeMeta:   metav1.TypeMeta{APIVersion: "policy/v1", Kind: "PodDisruptionBudget"},
			ObjectMeta: objectMeta(gw),
			Spec:       policyv1.PodDisruptionBudgetSpec{Selector: &metav1.LabelSelector{MatchLabels: map[string]string{LabelGatewayName: gw.Name}}},
		}
		if out.pdb, err = finish(pdb, cust[KeyPodDisruptionBudget], gw); err != nil {
			return out, err
		}
	}
	return out, nil
}

// finish merges the overlays over obj (a typed object, for its strategic
// merge keys) and pins what a customisation may not change.
func finish(obj any, overlays []string, gw *gatewayv1.Gateway) ([]byte, error) {
	base, err := json.Marshal(obj)
	if err != nil {
		return nil, fmt.Errorf("encode %T: %w", obj, err)
	}
	for _, o := range overlays {
		patch, err := yaml.YAMLToJSON([]byte(o))
		if err != nil {
			return nil, fmt.Errorf("read %T customisation: %w", obj, err)
		}
		if base, err = strategicpatch.StrategicMergePatch(base, patch, obj); err != nil {
			return nil, fmt.Errorf("merge %T customisation: %w", obj, err)
		}
	}
	// The merge is untyped: a value of the wrong type shows when decoded
	// as the object.
	if err := json.Unmarshal(base, reflect.New(reflect.TypeOf(obj).Elem()).Interface()); err != nil {
		return nil, fmt.Errorf("customised %T: %w", obj, err)
	}
	var m map[string]any
	if err := json.Unmarshal(base, &m); err != nil {
		return nil, fmt.Errorf("decode %T: %w", obj, err)
	}
	own := objectMeta(gw)
	md, _ := m["metadata"].(map[string]any)
	if md == nil {
		md = map[string]any{}
		m["metadata"] = md
	}
	md["name"], md["namespace"] = own.Name, own.Namespace
	md["ownerReferences"] = []any{map[string]any{"apiVersion": own.OwnerReferences[0].APIVersion, "kind": "Gateway", "name": gw.Name, "uid": string(gw.UID)}}
	lbls, _ := md["labels"].(map[string]any)
	if lbls == nil {
		lbls = map[string]any{}
	}
	for _, k := range []string{LabelManaged, LabelGatewayName, LabelIstioGatewayName, LabelGatewayClassName, enrolment.LabelDataplaneMode} {
		lbls[k] = own.Labels[k]
	}
	md["labels"] = lbls
	delete(md, "creationTimestamp")
	delete(m, "status")
	b, err := json.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("encode %T: %w", obj, err)
	}
	return b, nil
}

// service is the waypoint's Service: HBONE on each waypoint listener's
// port (15008), readiness and metrics, as Istio's waypoint Service.
func service(gw *gatewayv1.Gateway) *corev1.Service {
	tcp := "tcp"
	ports := []corev1.ServicePort{
		{Name: "status-port", Port: StatusPort, TargetPort: intstr.FromInt32(StatusPort), Protocol: corev1.ProtocolTCP, AppProtocol: &tcp},
		{Name: "metrics", Port: MetricsPort, TargetPort: intstr.FromInt32(MetricsPort), Protocol: corev1.ProtocolTCP, AppProtocol: ptr.To("http")},
	}
	seen := map[int32]bool{StatusPort: true, MetricsPort: true}
	for _, l := range gw.Spec.Listeners {
		if seen[int32(l.Port)] || !isWaypointProtocol(l.Protocol) {
			continue
		}
		seen[int32(l.Port)] = true
		ap := strings.ToLower(string(l.Protocol))
		ports = append(ports, corev1.ServicePort{Name: string(l.Name), Port: int32(l.Port), TargetPort: intstr.FromInt32(int32(l.Port)), Protocol: corev1.ProtocolTCP, AppProtocol: &ap})
	}
	om := objectMeta(gw)
	return &corev1.Service{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Service"},
		ObjectMeta: om,
		Spec: corev1.ServiceSpec{
			Type:     corev1.ServiceTypeClusterIP,
			Selector: map[string]string{LabelGatewayName: gw.Name},
			Ports:    ports,
		},
	}
}

// deployment is the waypoint's Deployment: the waypoint binary with
// ztunnel's way of reaching istiod (a projected istio-ca token, the mesh
// root from istio-ca-root-cert), no privilege.
func deployment(gw *gatewayv1.Gateway, cfg DeployConfig) *appsv1.Deployment {
	om := objectMeta(gw)
	podLabels := maps.Clone(om.Labels)
	podLabels["service.istio.io/canonical-name"] = gw.Name
	podAnnotations := maps.Clone(om.Annotations)
	podAnnotations[annotationRedirection] = "disabled"
	podAnnotations["prometheus.io/scrape"] = "true"
	podAnnotations["prometheus.io/port"] = fmt.Sprint(MetricsPort)
	podAnnotations["prometheus.io/path"] = "/stats/prometheus"
	field := func(name, path string) corev1.EnvVar {
		return corev1.EnvVar{Name: name, ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: path}}}
	}
	return &appsv1.Deployment{
		TypeMeta:   metav1.TypeMeta{APIVersion: "apps/v1", Kind: "Deployment"},
		ObjectMeta: om,
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To[int32](1),
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{LabelGatewayName: gw.Name}},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: podLabels, Annotations: podAnnotations},
				Spec: corev1.PodSpec{
					ServiceAccountName:            gw.Name,
					TerminationGracePeriodSeconds: ptr.To[int64](gracePeriod),
					SecurityContext: &corev1.PodSecurityContext{
						RunAsNonRoot: ptr.To(true), RunAsUser: ptr.To[int64](proxyUID), RunAsGroup: ptr.To[int64](proxyUID),
						SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
					},
					Containers: []corev1.Container{{
						Name:            "istio-proxy",
						Image:           cfg.Image,
						ImagePullPolicy: corev1.PullPolicy(cfg.ImagePullPolicy),
						Args: []string{
							"--xds-address=" + cfg.IstiodAddress,
							"--xds-root-cert=" + rootCert,
							"--xds-token=" + tokenFile,
							"--ca-address=" + cfg.IstiodAddress,
							"--ca-root-cert=" + rootCert,
							"--ca-token=" + tokenFile,
							// Access logs are what the xDS configures
							// (MeshConfig, Telemetry), as Istio's: none by
							// default.
							"--access-log=",
						},
						// Its identity and xDS node (waypoint~<ip>~<pod>.<ns>~<ns>.svc.<domain>).
						Env: []corev1.EnvVar{
							field("POD_NAME", "metadata.name"),
							field("POD_NAMESPACE", "metadata.namespace"),
							field("INSTANCE_IP", "status.podIP"),
							field("SERVICE_ACCOUNT", "spec.serviceAccountName"),
							field("NODE_NAME", "spec.nodeName"),
							{Name: "TRUST_DOMAIN", Value: cfg.TrustDomain},
							{Name: "CLUSTER_ID", Value: cfg.ClusterID},
							{Name: "CLUSTER_DOMAIN", Value: cfg.DomainSuffix},
							// HTTP/2 extended CONNECT (WebSocket over
							// HTTP/2) from the start: without it the
							// waypoint re-execs itself to set it
							// (waypoint/xconnect.go).
							{Name: "GODEBUG", Value: "http2xconnect=1"},
						},
						Ports: []corev1.ContainerPort{
							{Name: "hbone", ContainerPort: mesh.HBONEPort, Protocol: corev1.ProtocolTCP},
							{Name: "metrics", ContainerPort: MetricsPort, Protocol: corev1.ProtocolTCP},
							{Name: "status-port", ContainerPort: StatusPort, Protocol: corev1.ProtocolTCP},
						},
						ReadinessProbe: &corev1.Probe{
							ProbeHandler:  corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/healthz/ready", Port: intstr.FromInt32(StatusPort)}},
							PeriodSeconds: 5, TimeoutSeconds: 3, FailureThreshold: 3,
						},
						SecurityContext: &corev1.SecurityContext{
							RunAsNonRoot:             ptr.To(true),
							Privileged:               ptr.To(false),
							AllowPrivilegeEscalation: ptr.To(false),
							ReadOnlyRootFilesystem:   ptr.To(true),
							Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
						},
						VolumeMounts: []corev1.VolumeMount{
							{Name: "istio-token", MountPath: tokenDir, ReadOnly: true},
							{Name: "istiod-ca-cert", MountPath: rootCertDir, ReadOnly: true},
							// The pod's labels, which the waypoint sends
							// istiod as LABELS (Istio's podinfo volume).
							{Name: "istio-podinfo", MountPath: "/etc/istio/pod", ReadOnly: true},
						},
					}},
					Volumes: []corev1.Volume{
						{Name: "istio-token", VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{
							Sources: []corev1.VolumeProjection{{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{
								Audience: "istio-ca", ExpirationSeconds: ptr.To[int64](tokenLifetime), Path: "istio-token",
							}}},
						}}},
						{Name: "istiod-ca-cert", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{
							LocalObjectReference: corev1.LocalObjectReference{Name: "istio-ca-root-cert"},
						}}},
						{Name: "istio-podinfo", VolumeSource: corev1.VolumeSource{DownwardAPI: &corev1.DownwardAPIVolumeSource{
							Items: []corev1.DownwardAPIVolumeFile{{Path: "labels", FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.labels"}}},
						}}},
					},
				},
			},
		},
	}
}

// WaypointObjects are the ServiceAccount, Service and Deployment the
// waypoint controller applies for the waypoint Gateway gw, before any
// customisation: for running Ambit's waypoint under a control plane
// that does not deploy it, such as Istio's own istiod with its
// deployment controller off (e2e/istio).
func WaypointObjects(gw *gatewayv1.Gateway, cfg DeployConfig) (*corev1.ServiceAccount, *corev1.Service, *appsv1.Deployment) {
	sa := &corev1.ServiceAccount{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "ServiceAccount"}, ObjectMeta: objectMeta(gw)}
	return sa, service(gw), deployment(gw, cfg)
}
