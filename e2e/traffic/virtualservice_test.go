package traffic

import (
	"context"
	"fmt"
	"maps"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ambitmesh/ambit/ambitctl/waypoint"
	"github.com/ambitmesh/ambit/e2e/internal/bookinfo"
	"github.com/ambitmesh/ambit/samples/bookinfo/app"
)

// applyVS applies sample files of samples/bookinfo/networking and waits
// until the waypoint of service (its service account's, bookinfo-<service>)
// routes as want says.
func (e *env) applyVS(t *testing.T, ctx context.Context, service string, want []string, files ...string) {
	t.Helper()
	args := []string{"apply", "-n", ns}
	for _, f := range files {
		args = append(args, "-f", filepath.Join(e.root, "samples", "bookinfo", "networking", f))
	}
	if _, err := bookinfo.Kubectl(ctx, e.l, args...); err != nil {
		t.Fatal(err)
	}
	var last []string
	_, err := e.mesh.WaitWaypoint(ctx, ns, "bookinfo-"+service+waypoint.ServiceAccountSuffix, 1, fmt.Sprintf("%s routes %q", service, want), func(dump string) bool {
		last = bookinfo.Routes(dump, service, ns)
		return slices.Equal(last, want)
	})
	if err != nil {
		t.Fatalf("%v\nlast routes: %q", err, last)
	}
}

// page loads the product page once (as the signed-in user of cookies).
func (e *env) page(t *testing.T, ctx context.Context, user string) string {
	t.Helper()
	var cookies = e.login(t, ctx, user)
	page, err := e.get(ctx, e.productpage+"/productpage", cookies)
	if err != nil {
		t.Fatal(err)
	}
	return page
}

// TestBookinfoVirtualServices: Istio's VirtualService and DestinationRule
// samples for Bookinfo, applied unchanged, at the waypoints of reviews'
// and ratings' service accounts: subsets by version label, weights,
// routing by end-user, and the fault-injection task's delay and abort for
// jason, with what Istio's task says the page then shows.
func TestBookinfoVirtualServices(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 12*time.Minute)
	defer cancel()
	e := start(t, ctx)
	e.waypoint(t, ctx, "bookinfo-reviews")
	e.waypoint(t, ctx, "bookinfo-ratings")

	t.Run("all-v1", func(t *testing.T) {
		e.applyVS(t, ctx, "reviews", []string{"/* → reviews/v1"}, "destination-rule-all.yaml", "virtual-service-all-v1.yaml")
		if got := e.versions(t, ctx, 30, nil); !maps.Equal(got, map[string]int{"v1": 30}) {
			t.Errorf("30 pages: got %v, want all v1", got)
		}
	})
	t.Run("reviews-test-v2", func(t *testing.T) {
		e.applyVS(t, ctx, "reviews", []string{"/* end-user=jason → reviews/v2", "/* → reviews/v1"}, "virtual-service-reviews-test-v2.yaml")
		if got := e.versions(t, ctx, 20, e.login(t, ctx, "jason")); !maps.Equal(got, map[string]int{"v2": 20}) {
			t.Errorf("20 pages as jason: got %v, want all v2", got)
		}
		if got := e.versions(t, ctx, 20, nil); !maps.Equal(got, map[string]int{"v1": 20}) {
			t.Errorf("20 anonymous pages: got %v, want all v1", got)
		}
	})
	t.Run("reviews-50-v3", func(t *testing.T) {
		e.applyVS(t, ctx, "reviews", []string{"/* → reviews/v1 50%, reviews/v3 50%"}, "virtual-service-reviews-50-v3.yaml")
		got := e.versions(t, ctx, 200, nil)
		if got["v2"] != 0 {
			t.Errorf("200 pages: got %v, want v1 and v3 only", got)
		}
		within(t, "v3", got["v3"], 200, 0.5)
	})
	t.Run("reviews-90-10", func(t *testing.T) {
		e.applyVS(t, ctx, "reviews", []string{"/* → reviews/v1 90%, reviews/v2 10%"}, "virtual-service-reviews-90-10.yaml")
		got := e.versions(t, ctx, 200, nil)
		if got["v3"] != 0 {
			t.Errorf("200 pages: got %v, want v1 and v2 only", got)
		}
		within(t, "v2", got["v2"], 200, 0.1)
	})
	t.Run("reviews-jason-v2-v3", func(t *testing.T) {
		e.applyVS(t, ctx, "reviews", []string{"/* end-user=jason → reviews/v2", "/* → reviews/v3"}, "virtual-service-reviews-jason-v2-v3.yaml")
		if got := e.versions(t, ctx, 10, e.login(t, ctx, "jason")); !maps.Equal(got, map[string]int{"v2": 10}) {
			t.Errorf("10 pages as jason: got %v, want all v2", got)
		}
		if got := e.versions(t, ctx, 10, nil); !maps.Equal(got, map[string]int{"v3": 10}) {
			t.Errorf("10 anonymous pages: got %v, want all v3", got)
		}
	})
	// Istio's fault-injection task: jason sees reviews v2, whose call to
	// ratings is delayed 7 s; v2 waits up to 10 s for ratings, but
	// productpage waits 3 s for reviews (and tries twice), so jason's page
	// has no reviews. Others see v1, untouched.
	t.Run("ratings-test-delay", func(t *testing.T) {
		e.applyVS(t, ctx, "reviews", []string{"/* end-user=jason → reviews/v2", "/* → reviews/v1"}, "virtual-service-reviews-test-v2.yaml")
		e.applyVS(t, ctx, "ratings", []string{"/* end-user=jason → ratings/v1", "/* → ratings/v1"}, "virtual-service-ratings-test-delay.yaml")
		if page := e.page(t, ctx, "jason"); !strings.Contains(page, app.ReviewsUnavailable) {
			t.Errorf("jason's page with ratings delayed 7s: got\n%s\nwant %q", page, app.ReviewsUnavailable)
		}
		if v, err := bookinfo.ReviewsVersion(e.page(t, ctx, "someone")); err != nil || v != "v1" {
			t.Errorf("someone else's page: got %q, %v, want v1", v, err)
		}
	})
	// The abort: ratings answers jason 500 at its waypoint; reviews v2
	// shows the ratings error in place of the stars.
	t.Run("ratings-test-abort", func(t *testing.T) {
		e.applyVS(t, ctx, "ratings", []string{"/* end-user=jason → ratings/v1", "/* → ratings/v1"}, "virtual-service-ratings-test-abort.yaml")
		page := e.page(t, ctx, "jason")
		if got := strings.Count(page, "Ratings service is currently unavailable"); got != 2 {
			t.Errorf("jason's page with ratings aborted: got %d ratings errors in\n%s\nwant 2", got, page)
		}
		if v, err := bookinfo.ReviewsVersion(e.page(t, ctx, "someone")); err != nil || v != "v1" {
			t.Errorf("someone else's page: got %q, %v, want v1", v, err)
		}
	})
}
