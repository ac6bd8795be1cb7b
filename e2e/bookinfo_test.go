package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ambitmesh/ambit/e2e/internal/bookinfo"
	"github.com/ambitmesh/ambit/internal/lab"
	"github.com/ambitmesh/ambit/samples/bookinfo/app"
)

// TestBookinfo: Bookinfo deployed across two nodes answers /productpage
// to a client pod with the book details and the reviews, productpage
// reaching details and reviews (and reviews v2 and v3 reaching ratings) by
// Service name across nodes; repeated requests reach every reviews version,
// each showing its own stars; with details gone the page still renders,
// with the error in its place.
func TestBookinfo(t *testing.T) {
	l := startLab(t, lab.Config{Nodes: 2})
	if bookinfo.Image != lab.BookinfoImage {
		t.Fatalf("bookinfo image: e2e/internal/bookinfo uses %q, the lab runs %q", bookinfo.Image, lab.BookinfoImage)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()

	const ns = "bookinfo"
	if err := l.CreateNamespace(ctx, ns, nil); err != nil {
		t.Fatal(err)
	}
	pods, err := bookinfo.Install(ctx, l, ns, bookinfo.Spread("node1", "node2"))
	if err != nil {
		t.Fatal(err)
	}

	if _, err := l.RunPod(ctx, lab.EchoPod(ns, "client", "node1", map[string]string{"app": "client"})); err != nil {
		t.Fatal(err)
	}
	clientNS, ok := l.Node("node1").Kubelet.PodNetNS(ns, "client")
	if !ok {
		t.Fatal("client pod: no network namespace on node1")
	}
	// A fresh connection per request, so that the Service balances each
	// one anew.
	client := &http.Client{Transport: &http.Transport{DialContext: clientNS.DialContext, DisableKeepAlives: true}}
	svc, err := l.Client.CoreV1().Services(ns).Get(ctx, app.Productpage, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	base := "http://" + net.JoinHostPort(svc.Spec.ClusterIP, fmt.Sprint(bookinfo.Port))

	// Every version of reviews answers, each with its own stars: v1 none,
	// v2 black, v3 red (from ratings, on the other node).
	wantColor := map[string]string{"reviews-v1": "", "reviews-v2": "black", "reviews-v3": "red"}
	seen := map[string]int{}
	podRE := regexp.MustCompile(`<span id="reviews-pod">([^<]*)</span>`)
	const maxRequests = 100
	for i := 0; i < maxRequests && len(seen) < len(wantColor); i++ {
		status, page := fetch(ctx, t, client, base+"/productpage")
		if status != http.StatusOK {
			t.Fatalf("GET /productpage: got status %d, want 200:\n%s", status, page)
		}
		for _, want := range []string{"Book Details", "PublisherA", "Book Reviews", "Reviewer1", "Reviewer2"} {
			if !strings.Contains(page, want) {
				t.Fatalf("GET /productpage: got no %q in\n%s", want, page)
			}
		}
		m := podRE.FindStringSubmatch(page)
		if m == nil {
			t.Fatalf("GET /productpage: got no reviews pod name in\n%s", page)
		}
		color, known := wantColor[m[1]]
		if !known {
			t.Fatalf("GET /productpage: got reviews from %q, want one of reviews-v1, -v2, -v3", m[1])
		}
		stars := strings.Count(page, `class="stars"`)
		switch {
		case color == "" && stars != 0:
			t.Errorf("page from %s: got %d star ratings, want none", m[1], stars)
		case color != "" && (stars != 2 || !strings.Contains(page, `data-color="`+color+`"`)):
			t.Errorf("page from %s: got %d star ratings, want 2 in %s:\n%s", m[1], stars, color, page)
		}
		seen[m[1]]++
	}
	t.Logf("reviews versions reached: %v", seen)
	if len(seen) < len(wantColor) {
		t.Errorf("after %d requests: got reviews from %v, want every one of reviews-v1, -v2, -v3", maxRequests, seen)
	}

	// The API, productpage calling ratings directly.
	status, body := fetch(ctx, t, client, base+"/api/v1/products/0/ratings")
	if want := `{"id":0,"ratings":{"Reviewer1":5,"Reviewer2":4}}`; status != http.StatusOK || strings.TrimSpace(body) != want {
		t.Errorf("GET /api/v1/products/0/ratings: got %d %q, want 200 %s", status, body, want)
	}

	// Without details the page renders, with the error in place of the
	// details.
	if err := l.DeletePod(ctx, ns, pods["details-v1"].Name); err != nil {
		t.Fatal(err)
	}
	status, page := fetch(ctx, t, client, base+"/productpage")
	if status != http.StatusOK || !strings.Contains(page, app.DetailsUnavailable) || !strings.Contains(page, "Book Reviews") {
		t.Errorf("GET /productpage without details: got %d, want 200 with %q and the reviews:\n%s", status, app.DetailsUnavailable, page)
	}
}

// fetch gets url with client and returns status and body.
func fetch(ctx context.Context, t *testing.T, client *http.Client, url string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("get %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read %s: %v", url, err)
	}
	return resp.StatusCode, string(body)
}
