package istiod

import (
	"context"
	"reflect"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	policyv1 "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/tools/cache"
	watchtools "k8s.io/client-go/tools/watch"
	"k8s.io/client-go/util/retry"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	gatewayclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"

	"github.com/ambitmesh/ambit/internal/enrolment"
	"github.com/ambitmesh/ambit/internal/kubewatch"
	"github.com/ambitmesh/ambit/internal/lab"
	"github.com/ambitmesh/ambit/istiod/ambient"
	"github.com/ambitmesh/ambit/istiod/gateway"
	"github.com/ambitmesh/ambit/istiod/server"
)

// testWaypointImage is the image istiod deploys waypoints with in these
// tests; nothing pulls it (the lab has no container runtime).
const testWaypointImage = "localhost:5000/ambit/waypoint:test"

// awaitObject watches the object name until cond holds for it, and
// returns it.
func awaitObject[T runtime.Object, L runtime.Object](ctx context.Context, t *testing.T, what string, c kubewatch.Client[L], name string, cond func(T) bool) T {
	t.Helper()
	var zero, got T
	typ := reflect.New(reflect.TypeOf(zero).Elem()).Interface().(runtime.Object)
	_, err := watchtools.UntilWithSync(ctx, kubewatch.Named(c, name), typ, nil, func(e watch.Event) (bool, error) {
		o, ok := e.Object.(T)
		if !ok || e.Type == watch.Deleted {
			return false, nil
		}
		got = o
		return cond(o), nil
	})
	if err != nil {
		t.Fatalf("%s: %v (last seen: %+v)", what, err, got)
	}
	return got
}

// awaitGone watches the object name until it does not exist.
func awaitGone[T runtime.Object, L runtime.Object](ctx context.Context, t *testing.T, what string, c kubewatch.Client[L], name string) {
	t.Helper()
	var zero T
	typ := reflect.New(reflect.TypeOf(zero).Elem()).Interface().(runtime.Object)
	_, err := watchtools.UntilWithSync(ctx, kubewatch.Named(c, name), typ, func(s cache.Store) (bool, error) {
		return len(s.List()) == 0, nil
	}, func(e watch.Event) (bool, error) { return e.Type == watch.Deleted, nil })
	if err != nil {
		t.Fatalf("%s: still there: %v", what, err)
	}
}

func condition(conds []metav1.Condition, typ string) metav1.Condition {
	if c := meta.FindStatusCondition(conds, typ); c != nil {
		return *c
	}
	return metav1.Condition{}
}

// waypointController: against the real apiserver and controller-manager,
// the controller deploys a waypoint Gateway (customised by the class
// defaults and its parametersRef), reports it Accepted, then Programmed
// once its Deployment is available, follows an update of its
// infrastructure labels, refuses bad Gateways on the Gateways alone,
// writes istio.io/WaypointBound on bound Services, and its objects go
// with the Gateway. istiod runs with the waypoint image and the Gateway
// API (TestWaypointGatewayClass).
func waypointController(ctx context.Context, t *testing.T, l *lab.Lab, gw gatewayclient.Interface) {
	const ns = "wpctl"
	if err := l.CreateNamespace(ctx, ns, nil); err != nil {
		t.Fatal(err)
	}
	kube := l.Client
	cms := func(namespace string) interface {
		Create(context.Context, *corev1.ConfigMap, metav1.CreateOptions) (*corev1.ConfigMap, error)
	} {
		return kube.CoreV1().ConfigMaps(namespace)
	}
	// Class defaults (a pod annotation), and the Gateway's parameters (a
	// Service annotation, two replicas, a disruption budget).
	if _, err := cms(server.DefaultCANamespace).Create(ctx, &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: "waypoint-defaults", Labels: map[string]string{gateway.LabelDefaultsForClass: gateway.WaypointClass}},
		Data:       map[string]string{gateway.KeyDeployment: "spec:\n  template:\n    metadata:\n      annotations:\n        from-defaults: \"yes\"\n"},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := cms(ns).Create(ctx, &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: "wp-params"},
		Data: map[string]string{
			gateway.KeyService:             "metadata:\n  annotations:\n    from-params: \"yes\"\n",
			gateway.KeyDeployment:          "spec:\n  replicas: 2\n",
			gateway.KeyPodDisruptionBudget: "spec:\n  minAvailable: 1\n",
		},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	gws := gw.GatewayV1().Gateways(ns)
	mk := func(name string, port gatewayv1.PortNumber, infra *gatewayv1.GatewayInfrastructure, annotations map[string]string) {
		t.Helper()
		if _, err := gws.Create(ctx, &gatewayv1.Gateway{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Annotations: annotations},
			Spec: gatewayv1.GatewaySpec{GatewayClassName: gateway.WaypointClass, Infrastructure: infra,
				Listeners: []gatewayv1.Listener{{Name: "mesh", Port: port, Protocol: gateway.ListenerProtocolHBONE}}},
		}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	mk("wp", 15008, &gatewayv1.GatewayInfrastructure{
		Labels:        map[gatewayv1.LabelKey]gatewayv1.LabelValue{"team": "a"},
		ParametersRef: &gatewayv1.LocalParametersReference{Group: "", Kind: "ConfigMap", Name: "wp-params"},
	}, nil)
	wpGW, err := gws.Get(ctx, "wp", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}

	owned := func(m metav1.Object) bool {
		refs := m.GetOwnerReferences()
		return len(refs) == 1 && refs[0].UID == wpGW.UID && refs[0].Kind == "Gateway" && m.GetLabels()[gateway.LabelManaged] == gateway.ManagedMesh
	}
	deps := kube.AppsV1().Deployments(ns)
	d := awaitObject(ctx, t, "waypoint deployment", deps, "wp", func(d *appsv1.Deployment) bool { return owned(d) })
	tmpl := d.Spec.Template
	if tmpl.Labels[enrolment.LabelDataplaneMode] != enrolment.ModeNone || tmpl.Labels["team"] != "a" || tmpl.Annotations["from-defaults"] != "yes" {
		t.Errorf("pod template labels %v annotations %v: want dataplane-mode none, team=a, and the class defaults' annotation", tmpl.Labels, tmpl.Annotations)
	}
	if d.Spec.Replicas == nil || *d.Spec.Replicas != 2 {
		t.Errorf("replicas: got %v, want the parameters' 2", d.Spec.Replicas)
	}
	if c := tmpl.Spec.Containers; len(c) != 1 || c[0].Image != testWaypointImage {
		t.Errorf("containers %+v: want one with image %s", c, testWaypointImage)
	}
	svc := awaitObject(ctx, t, "waypoint service", kube.CoreV1().Services(ns), "wp", func(s *corev1.Service) bool { return owned(s) })
	if svc.Annotations["from-params"] != "yes" {
		t.Errorf("service annotations %v: want the parameters' from-params", svc.Annotations)
	}
	var ports []int32
	for _, p := range svc.Spec.Ports {
		ports = append(ports, p.Port)
	}
	if !slices.Contains(ports, 15008) || !slices.Contains(ports, 15021) || !slices.Contains(ports, 15020) {
		t.Errorf("service ports %v: want 15008, 15021, 15020", ports)
	}
	awaitObject(ctx, t, "waypoint service account", kube.CoreV1().ServiceAccounts(ns), "wp", func(sa *corev1.ServiceAccount) bool { return owned(sa) })
	awaitObject(ctx, t, "waypoint disruption budget", kube.PolicyV1().PodDisruptionBudgets(ns), "wp", func(p *policyv1.PodDisruptionBudget) bool { return owned(p) })

	// Accepted, with its addresses, but not Programmed: no pod is ready.
	g := awaitObject(ctx, t, "gateway accepted", gws, "wp", func(g *gatewayv1.Gateway) bool {
		return condition(g.Status.Conditions, "Accepted").Status == metav1.ConditionTrue && len(g.Status.Addresses) > 0
	})
	if c := condition(g.Status.Conditions, "Programmed"); c.Status != metav1.ConditionFalse || c.Reason != string(gatewayv1.GatewayReasonPending) {
		t.Errorf("Programmed before the deployment is available: got %+v, want False/Pending", c)
	}
	if a := g.Status.Addresses[0]; a.Value != svc.Spec.ClusterIP {
		t.Errorf("addresses %+v: want the Service's cluster IP %s first", g.Status.Addresses, svc.Spec.ClusterIP)
	}
	if len(g.Status.Listeners) != 1 || condition(g.Status.Listeners[0].Conditions, "Accepted").Status != metav1.ConditionTrue {
		t.Errorf("listener status %+v: want mesh accepted", g.Status.Listeners)
	}

	// The controller-manager's ReplicaSet controller made the pods; the
	// lab has no scheduler, and its kubelet stand-in runs only the pods a
	// test hands it: report them ready as a kubelet would, and the real
	// Deployment controller reports the Deployment available.
	podWatch := kube.CoreV1().Pods(ns)
	ready := 0
	_, err = watchtools.UntilWithSync(ctx, kubewatch.Labelled(podWatch, gateway.LabelGatewayName+"=wp"), &corev1.Pod{}, nil, func(e watch.Event) (bool, error) {
		p, ok := e.Object.(*corev1.Pod)
		if !ok || e.Type != watch.Added {
			return false, nil
		}
		p = p.DeepCopy()
		now := metav1.Now()
		p.Status.Phase = corev1.PodRunning
		p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: now}}
		if _, err := podWatch.UpdateStatus(ctx, p, metav1.UpdateOptions{}); err != nil {
			return false, err
		}
		ready++
		return ready == 2, nil
	})
	if err != nil {
		t.Fatalf("make the waypoint's pods ready: %v", err)
	}
	g = awaitObject(ctx, t, "gateway programmed", gws, "wp", func(g *gatewayv1.Gateway) bool {
		return condition(g.Status.Conditions, "Programmed").Status == metav1.ConditionTrue
	})
	if c := condition(g.Status.Conditions, "Programmed"); c.Reason != string(gatewayv1.GatewayReasonProgrammed) || c.ObservedGeneration != g.Generation {
		t.Errorf("Programmed: got %+v, want reason Programmed at generation %d", c, g.Generation)
	}

	// An update: new infrastructure labels reach the Deployment and its
	// pods' template.
	if err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		cur, err := gws.Get(ctx, "wp", metav1.GetOptions{})
		if err != nil {
			return err
		}
		cur.Spec.Infrastructure.Labels["team"] = "b"
		_, err = gws.Update(ctx, cur, metav1.UpdateOptions{})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	awaitObject(ctx, t, "deployment relabelled", deps, "wp", func(d *appsv1.Deployment) bool {
		return d.Labels["team"] == "b" && d.Spec.Template.Labels["team"] == "b"
	})

	// Bad Gateways are refused on themselves and deploy nothing; the good
	// one stays programmed. Two waypoints for one service account are
	// both told so.
	mk("wrong-port", 15009, nil, nil)
	bad := awaitObject(ctx, t, "wrong port refused", gws, "wrong-port", func(g *gatewayv1.Gateway) bool {
		return condition(g.Status.Conditions, "Accepted").Status == metav1.ConditionFalse
	})
	if c := condition(bad.Status.Conditions, "Accepted"); c.Reason != string(gatewayv1.GatewayReasonListenersNotValid) {
		t.Errorf("wrong port: Accepted %+v, want reason ListenersNotValid", c)
	}
	if lc := condition(bad.Status.Listeners[0].Conditions, "Accepted"); lc.Reason != string(gatewayv1.ListenerReasonPortUnavailable) {
		t.Errorf("wrong port: listener Accepted %+v, want reason PortUnavailable", lc)
	}
	if _, err := deps.Get(ctx, "wrong-port", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("wrong port: deployment: got %v, want not found", err)
	}
	claim := map[string]string{ambient.AnnotationForServiceAccount: "reviews"}
	mk("claim-1", 15008, nil, claim)
	mk("claim-2", 15008, nil, claim)
	for _, name := range []string{"claim-1", "claim-2"} {
		awaitObject(ctx, t, name+" told of the conflict", gws, name, func(g *gatewayv1.Gateway) bool {
			c := condition(g.Status.Conditions, gateway.ConditionServiceAccountClaimed)
			return c.Status == metav1.ConditionFalse && c.Reason == ambient.ReasonWaypointConflict
		})
	}
	if g, err := gws.Get(ctx, "wp", metav1.GetOptions{}); err != nil || condition(g.Status.Conditions, "Programmed").Status != metav1.ConditionTrue {
		t.Errorf("wp after the bad gateways: got %v (%v), want Programmed", g.Status.Conditions, err)
	}

	// A Gateway named as an existing ServiceAccount (a workload's) is not
	// deployed: the controller does not take the account over, which
	// would give the waypoint its identity and delete it with the Gateway.
	accounts := kube.CoreV1().ServiceAccounts(ns)
	if _, err := accounts.Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "shared"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	mk("shared", 15008, nil, nil)
	g = awaitObject(ctx, t, "gateway over a workload's account refused", gws, "shared", func(g *gatewayv1.Gateway) bool {
		return condition(g.Status.Conditions, "Programmed").Reason == string(gatewayv1.GatewayReasonInvalid)
	})
	if c := condition(g.Status.Conditions, "Programmed"); c.Status != metav1.ConditionFalse || !strings.Contains(c.Message, "ServiceAccount "+ns+"/shared exists") {
		t.Errorf("Programmed over a workload's account: got %+v, want False naming the ServiceAccount", c)
	}
	if _, err := deps.Get(ctx, "shared", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("deployment over a workload's account: got %v, want not found", err)
	}
	if err := gws.Delete(ctx, "shared", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	awaitGone[*gatewayv1.Gateway](ctx, t, "gateway shared", gws, "shared")
	acct, err := accounts.Get(ctx, "shared", metav1.GetOptions{})
	if err != nil {
		t.Fatalf("the workload's account after its namesake Gateway went: %v", err)
	}
	if len(acct.OwnerReferences) != 0 || acct.Labels[gateway.LabelManaged] != "" {
		t.Errorf("the workload's account: owners %v labels %v, want untouched", acct.OwnerReferences, acct.Labels)
	}

	// Services bound to a waypoint carry istio.io/WaypointBound; a
	// namespace's binding is an Event.
	for name, wp := range map[string]string{"front": "wp", "orphan": "missing"} {
		if _, err := kube.CoreV1().Services(ns).Create(ctx, &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{ambient.LabelUseWaypoint: wp}},
			Spec:       corev1.ServiceSpec{Selector: map[string]string{"app": name}, Ports: []corev1.ServicePort{{Name: "http", Port: 80}}},
		}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	for name, want := range map[string]struct {
		status metav1.ConditionStatus
		reason string
	}{"front": {metav1.ConditionTrue, ambient.ReasonWaypointAccepted}, "orphan": {metav1.ConditionFalse, ambient.ReasonWaypointNotFound}} {
		awaitObject(ctx, t, "service "+name+" bound", kube.CoreV1().Services(ns), name, func(s *corev1.Service) bool {
			c := condition(s.Status.Conditions, gateway.ConditionWaypointBound)
			return c.Status == want.status && c.Reason == want.reason && c.Message != ""
		})
	}
	sa, err := kube.CoreV1().ServiceAccounts("shop").Get(ctx, "reviews", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	evs := kube.EventsV1().Events("shop")
	_, err = watchtools.UntilWithSync(ctx, kubewatch.Selected(evs, metav1.ListOptions{}), &eventsv1.Event{}, nil, func(e watch.Event) (bool, error) {
		ev, ok := e.Object.(*eventsv1.Event)
		return ok && ev.Regarding.Kind == "ServiceAccount" && ev.Regarding.UID == sa.UID && ev.Reason == ambient.ReasonWaypointAccepted, nil
	})
	if err != nil {
		t.Errorf("event on service account shop/reviews: %v", err)
	}

	// Deleted with the Gateway.
	if err := gws.Delete(ctx, "wp", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	awaitGone[*appsv1.Deployment](ctx, t, "waypoint deployment", deps, "wp")
	awaitGone[*corev1.Service](ctx, t, "waypoint service", kube.CoreV1().Services(ns), "wp")
	awaitGone[*corev1.ServiceAccount](ctx, t, "waypoint service account", kube.CoreV1().ServiceAccounts(ns), "wp")
	awaitGone[*policyv1.PodDisruptionBudget](ctx, t, "waypoint disruption budget", kube.PolicyV1().PodDisruptionBudgets(ns), "wp")
	// The Service bound to it now waits for it.
	awaitObject(ctx, t, "service front unbound", kube.CoreV1().Services(ns), "front", func(s *corev1.Service) bool {
		return condition(s.Status.Conditions, gateway.ConditionWaypointBound).Reason == ambient.ReasonWaypointNotFound
	})
}
