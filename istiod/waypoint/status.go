package waypoint

import (
	"context"
	"fmt"

	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/ambitmesh/ambit/internal/logkey"
	"github.com/ambitmesh/ambit/istiod/gateway"
)

// routeParents merges a route's status for its Service parents into the
// parents it has: other controllers' entries stay, ours are replaced;
// a condition that did not change keeps its transition time.
func routeParents(have []gatewayv1.RouteParentStatus, st RouteStatus, now metav1.Time) []gatewayv1.RouteParentStatus {
	var out []gatewayv1.RouteParentStatus
	old := map[string]gatewayv1.RouteParentStatus{}
	for _, p := range have {
		if p.ControllerName == gateway.MeshController {
			old[parentKey(p.ParentRef)] = p
			continue
		}
		out = append(out, p)
	}
	for _, ps := range st.Parents {
		prev := old[parentKey(ps.Parent)]
		var conds []metav1.Condition
		for _, c := range []metav1.Condition{ps.Accepted, ps.ResolvedRefs} {
			c.LastTransitionTime = now
			for _, o := range prev.Conditions {
				if o.Type == c.Type && o.Status == c.Status {
					c.LastTransitionTime = o.LastTransitionTime
				}
			}
			conds = append(conds, c)
		}
		out = append(out, gatewayv1.RouteParentStatus{ParentRef: ps.Parent, ControllerName: gateway.MeshController, Conditions: conds})
	}
	return out
}

func parentKey(p gatewayv1.ParentReference) string {
	return fmt.Sprintf("%s/%s/%s/%s/%s/%d", ptrOr(p.Group, ""), ptrOr(p.Kind, ""), ptrOr(p.Namespace, ""), p.Name, ptrOr(p.SectionName, ""), ptrOr(p.Port, 0))
}

// writeStatuses writes each route's status where it differs from what
// the route has.
func (c *Controller) writeStatuses(ctx context.Context, statuses []RouteStatus) {
	if c.gwClient == nil {
		return
	}
	now := metav1.Now()
	for _, st := range statuses {
		obj := st.Kind + "/" + st.Namespace + "/" + st.Name
		var err error
		switch st.Kind {
		case KindHTTPRoute:
			if c.httpRoutes == nil {
				continue
			}
			r, gerr := c.httpRoutes.HTTPRoutes(st.Namespace).Get(st.Name)
			if gerr != nil {
				continue // gone since
			}
			parents := routeParents(r.Status.Parents, st, now)
			if equality.Semantic.DeepEqual(parents, r.Status.Parents) {
				continue
			}
			r = r.DeepCopy()
			r.Status.Parents = parents
			_, err = c.gwClient.GatewayV1().HTTPRoutes(st.Namespace).UpdateStatus(ctx, r, metav1.UpdateOptions{})
		case KindGRPCRoute:
			if c.grpcRoutes == nil {
				continue
			}
			r, gerr := c.grpcRoutes.GRPCRoutes(st.Namespace).Get(st.Name)
			if gerr != nil {
				continue
			}
			parents := routeParents(r.Status.Parents, st, now)
			if equality.Semantic.DeepEqual(parents, r.Status.Parents) {
				continue
			}
			r = r.DeepCopy()
			r.Status.Parents = parents
			_, err = c.gwClient.GatewayV1().GRPCRoutes(st.Namespace).UpdateStatus(ctx, r, metav1.UpdateOptions{})
		}
		if err != nil {
			c.log.Warn("write route status", logkey.Object, obj, logkey.Error, err)
		}
	}
}
