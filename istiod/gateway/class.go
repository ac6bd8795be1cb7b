// Package gateway is istiod's Gateway API controller. It keeps the
// waypoints' GatewayClass, as Istio's istiod does: it creates
// `istio-waypoint` (controller `istio.io/mesh-controller`) when it is
// missing, and again when it is deleted, but never changes a class that
// exists (users may manage it themselves); and it reports a class of its
// controller Accepted in its status (ClassController). It deploys each
// waypoint Gateway and reports its status (WaypointController), and
// writes the outcome of waypoint bindings on the bound objects
// (BindingWriter).
package gateway

import (
	"context"
	"fmt"
	"log/slog"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	gatewayclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"
	gatewaylisters "sigs.k8s.io/gateway-api/pkg/client/listers/apis/v1"

	"github.com/ambitmesh/ambit/internal/logkey"
	"github.com/ambitmesh/ambit/istiod/cluster"
)

// The waypoints' GatewayClass and its controller, Istio's names.
const (
	WaypointClass  = "istio-waypoint"
	MeshController = "istio.io/mesh-controller"
)

// acceptedMessage is the message of the Accepted condition.
const acceptedMessage = "Handled by Ambit's istiod"

// ClassController keeps the waypoint GatewayClass. It is built
// (NewClassController), registered on the cluster's informers
// (RegisterInformers), then run (Run) once they have started.
type ClassController struct {
	log     *slog.Logger
	client  gatewayclient.Interface
	classes gatewaylisters.GatewayClassLister
	queue   workqueue.TypedRateLimitingInterface[string]
}

// NewClassController builds the controller.
func NewClassController(log *slog.Logger) *ClassController {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &ClassController{
		log:   log,
		queue: workqueue.NewTypedRateLimitingQueue(workqueue.DefaultTypedControllerRateLimiter[string]()),
	}
}

// RegisterInformers watches GatewayClasses on the cluster's Gateway API
// factory, which it must have.
func (c *ClassController) RegisterInformers(cl *cluster.Cluster) error {
	if cl.GatewayAPIInformers == nil {
		return fmt.Errorf("register gateway class controller: no Gateway API client")
	}
	c.client = cl.GatewayAPI
	inf := cl.GatewayAPIInformers.Gateway().V1().GatewayClasses()
	c.classes = inf.Lister()
	enqueue := func(o any) {
		if d, ok := o.(cache.DeletedFinalStateUnknown); ok {
			o = d.Obj
		}
		if m, err := meta.Accessor(o); err == nil && m.GetName() == WaypointClass {
			c.queue.Add(WaypointClass)
		}
	}
	if _, err := inf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    enqueue,
		UpdateFunc: func(_, o any) { enqueue(o) },
		DeleteFunc: enqueue,
	}); err != nil {
		return fmt.Errorf("add gatewayclass handler: %w", err)
	}
	return nil
}

// Run reconciles the class now and after each change to it until ctx
// ends; the informers must have synced.
func (c *ClassController) Run(ctx context.Context) {
	go func() {
		<-ctx.Done()
		c.queue.ShutDown()
	}()
	c.queue.Add(WaypointClass)
	for {
		name, shutdown := c.queue.Get()
		if shutdown {
			return
		}
		if err := c.reconcile(ctx, name); err != nil {
			c.log.Warn("reconcile gatewayclass", "gatewayclass", name, logkey.Error, err)
			c.queue.AddRateLimited(name)
		} else {
			c.queue.Forget(name)
		}
		c.queue.Done(name)
	}
}

func (c *ClassController) reconcile(ctx context.Context, name string) error {
	gc, err := c.classes.Get(name)
	if apierrors.IsNotFound(err) {
		desc := "Ambit's waypoints: L7 proxies of the ambient mesh"
		_, err := c.client.GatewayV1().GatewayClasses().Create(ctx, &gatewayv1.GatewayClass{
			ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec:       gatewayv1.GatewayClassSpec{ControllerName: MeshController, Description: &desc},
		}, metav1.CreateOptions{})
		if apierrors.IsAlreadyExists(err) {
			return nil // created meanwhile (another istiod); its event follows
		}
		if err != nil {
			return fmt.Errorf("create gatewayclass %s: %w", name, err)
		}
		c.log.Info("gatewayclass created", "gatewayclass", name)
		return nil // its status is set on the event of its creation
	}
	if err != nil {
		return fmt.Errorf("get gatewayclass %s: %w", name, err)
	}
	if gc.Spec.ControllerName != MeshController {
		return nil // another controller's class: not ours to judge
	}
	gc = gc.DeepCopy()
	if !meta.SetStatusCondition(&gc.Status.Conditions, metav1.Condition{
		Type:               string(gatewayv1.GatewayClassConditionStatusAccepted),
		Status:             metav1.ConditionTrue,
		Reason:             string(gatewayv1.GatewayClassReasonAccepted),
		Message:            acceptedMessage,
		ObservedGeneration: gc.Generation,
	}) {
		return nil
	}
	if _, err := c.client.GatewayV1().GatewayClasses().UpdateStatus(ctx, gc, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("update gatewayclass %s status: %w", name, err)
	}
	return nil
}
