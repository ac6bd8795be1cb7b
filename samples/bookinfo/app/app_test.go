package app_test

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/ambitmesh/ambit/samples/bookinfo/app"
)

// recorder keeps the requests a service received.
type recorder struct {
	mu   sync.Mutex
	reqs []http.Request
}

func (r *recorder) wrap(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		r.mu.Lock()
		c := *req
		c.Header = req.Header.Clone()
		r.reqs = append(r.reqs, c)
		r.mu.Unlock()
		h.ServeHTTP(w, req)
	})
}

func (r *recorder) requests() []http.Request {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]http.Request(nil), r.reqs...)
}

// options say how to start Bookinfo for a test.
type options struct {
	// version of reviews.
	version string
	// down services refuse connections.
	down map[string]bool
	// status makes a service answer every request with this status.
	status map[string]int
}

// bookinfo is the four services on loopback, wired to each other.
type bookinfo struct {
	page                      *httptest.Server
	details, reviews, ratings *recorder
}

// refusedHostPort returns a loopback address nothing listens on.
func refusedHostPort(t *testing.T) (string, string) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	host, port, _ := net.SplitHostPort(addr)
	return host, port
}

func startBookinfo(t *testing.T, o options) *bookinfo {
	t.Helper()
	if o.version == "" {
		o.version = "v2"
	}
	b := &bookinfo{details: &recorder{}, reviews: &recorder{}, ratings: &recorder{}}
	env := map[string]string{"HOSTNAME": "reviews-" + o.version + "-pod", "CLUSTER_NAME": "lab"}
	start := func(service string, rec *recorder) *httptest.Server {
		t.Helper()
		hostKey, portKey := strings.ToUpper(service)+"_HOSTNAME", strings.ToUpper(service)+"_SERVICE_PORT"
		if o.down[service] {
			env[hostKey], env[portKey] = refusedHostPort(t)
			return nil
		}
		getenv := func(k string) string { return env[k] }
		if service == app.Reviews {
			env["SERVICE_VERSION"] = o.version
			defer delete(env, "SERVICE_VERSION")
		}
		cfg, err := app.ConfigFromEnv(service, getenv)
		if err != nil {
			t.Fatal(err)
		}
		h, err := app.New(cfg, nil)
		if err != nil {
			t.Fatal(err)
		}
		if code := o.status[service]; code != 0 {
			h = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				http.Error(w, "injected fault", code)
			})
		}
		if rec != nil {
			h = rec.wrap(h)
		}
		srv := httptest.NewServer(h)
		t.Cleanup(srv.Close)
		u, _ := url.Parse(srv.URL)
		env[hostKey], env[portKey] = u.Hostname(), u.Port()
		return srv
	}
	start(app.Ratings, b.ratings)
	start(app.Reviews, b.reviews)
	start(app.Details, b.details)
	b.page = start(app.Productpage, nil)
	return b
}

// get fetches path from srv with the headers and returns status and body.
func get(t *testing.T, srv *httptest.Server, path string, h http.Header) (int, string) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, srv.URL+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, vs := range h {
		req.Header[k] = vs
	}
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(body)
}

// TestCallGraph: productpage calls details and reviews once each; reviews
// v2 and v3 call ratings and show its stars in their colour; v1 does not
// call ratings and shows no stars.
func TestCallGraph(t *testing.T) {
	tests := []struct {
		version      string
		ratingsCalls int
		color        string
	}{
		{"v1", 0, ""},
		{"v2", 1, "black"},
		{"v3", 1, "red"},
	}
	for _, tc := range tests {
		t.Run(tc.version, func(t *testing.T) {
			b := startBookinfo(t, options{version: tc.version})
			status, page := get(t, b.page, "/productpage", nil)
			if status != http.StatusOK {
				t.Fatalf("GET /productpage: got status %d, want 200", status)
			}
			for _, want := range []string{
				"The Comedy of Errors", "Book Details", "PublisherA", "123-1234567890",
				"Book Reviews", "Reviewer1", "Reviewer2", "The slapstick humour is refreshing!",
				"reviews-" + tc.version + "-pod",
			} {
				if !strings.Contains(page, want) {
					t.Errorf("product page: got no %q in\n%s", want, page)
				}
			}
			wantStars := 0
			if tc.color != "" {
				wantStars = 2
			}
			if got := strings.Count(page, `class="stars"`); got != wantStars {
				t.Errorf("product page: got %d star ratings, want %d", got, wantStars)
			}
			if tc.color != "" && !strings.Contains(page, `data-color="`+tc.color+`" data-stars="5"`) {
				t.Errorf("product page: got no 5 %s stars for Reviewer1 in\n%s", tc.color, page)
			}

			for name, rec := range map[string]*recorder{"details": b.details, "reviews": b.reviews} {
				reqs := rec.requests()
				if len(reqs) != 1 || reqs[0].URL.Path != "/"+name+"/0" {
					t.Errorf("%s: got %d requests %v, want one GET /%s/0", name, len(reqs), paths(reqs), name)
				}
			}
			reqs := b.ratings.requests()
			if len(reqs) != tc.ratingsCalls {
				t.Errorf("ratings: got %d requests, want %d", len(reqs), tc.ratingsCalls)
			}
			for _, r := range reqs {
				if r.URL.Path != "/ratings/0" {
					t.Errorf("ratings: got request for %s, want /ratings/0", r.URL.Path)
				}
			}

			// The reviews API passes reviews' JSON through.
			status, body := get(t, b.page, "/api/v1/products/0/reviews", nil)
			if status != http.StatusOK {
				t.Fatalf("GET /api/v1/products/0/reviews: got status %d, want 200", status)
			}
			var pr app.ProductReviews
			if err := json.Unmarshal([]byte(body), &pr); err != nil {
				t.Fatalf("decode reviews %q: %v", body, err)
			}
			var wantRating1 *app.Rating
			if tc.color != "" {
				wantRating1 = &app.Rating{Stars: 5, Color: tc.color}
			}
			if pr.ID != "0" || pr.Podname != "reviews-"+tc.version+"-pod" || pr.Clustername != "lab" || len(pr.Reviews) != 2 {
				t.Fatalf("reviews: got %+v, want id 0, podname reviews-%s-pod, clustername lab, 2 reviews", pr, tc.version)
			}
			if diff := cmp.Diff(wantRating1, pr.Reviews[0].Rating); diff != "" {
				t.Errorf("Reviewer1 rating (-want +got):\n%s", diff)
			}
		})
	}
}

func paths(reqs []http.Request) []string {
	var out []string
	for _, r := range reqs {
		out = append(out, r.URL.Path)
	}
	return out
}

// TestHeaderPropagation: the tracing and routing headers of a request to
// productpage reach details, reviews and ratings; end-user is the
// signed-in user; other headers stay behind.
func TestHeaderPropagation(t *testing.T) {
	b := startBookinfo(t, options{version: "v2"})

	// Sign in as Istio's tasks do, and keep the cookie.
	form := url.Values{"username": {"jason"}, "passwd": {"x"}}
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, b.page.URL+"/login", strings.NewReader(form.Encode()))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Referer", b.page.URL+"/productpage")
	noRedirect := *b.page.Client()
	noRedirect.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	resp, err := noRedirect.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusFound || resp.Header.Get("Location") != b.page.URL+"/productpage" {
		t.Fatalf("POST /login: got %d to %q, want 302 to the referrer %s/productpage", resp.StatusCode, resp.Header.Get("Location"), b.page.URL)
	}
	cookies := resp.Cookies()
	if len(cookies) != 1 {
		t.Fatalf("POST /login: got cookies %v, want one", cookies)
	}

	in := http.Header{
		"X-Request-Id":      {"req-1"},
		"X-B3-Traceid":      {"80f198ee56343ba864fe8b2a57d3eff7"},
		"X-B3-Spanid":       {"e457b5a2e4d86bd1"},
		"X-B3-Parentspanid": {"05e3ac9a4f6e3b90"},
		"X-B3-Sampled":      {"1"},
		"Traceparent":       {"00-80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-01"},
		"Tracestate":        {"lab=1"},
		"User-Agent":        {"bookinfo-test"},
		"Cookie":            {cookies[0].Name + "=" + cookies[0].Value},
		"X-Not-Propagated":  {"secret"},
		"End-User":          {"forged"},
	}
	status, page := get(t, b.page, "/productpage", in)
	if status != http.StatusOK || !strings.Contains(page, "jason") {
		t.Fatalf("GET /productpage signed in: got status %d, page without the user jason:\n%s", status, page)
	}
	want := http.Header{}
	for _, k := range []string{"X-Request-Id", "X-B3-Traceid", "X-B3-Spanid", "X-B3-Parentspanid", "X-B3-Sampled", "Traceparent", "Tracestate", "User-Agent", "Cookie"} {
		want[k] = in[k]
	}
	want.Set("End-User", "jason")
	for name, rec := range map[string]*recorder{"details": b.details, "reviews": b.reviews, "ratings": b.ratings} {
		reqs := rec.requests()
		if len(reqs) != 1 {
			t.Fatalf("%s: got %d requests, want 1", name, len(reqs))
		}
		got := reqs[0].Header
		for k := range want {
			if diff := cmp.Diff(want.Values(k), got.Values(k)); diff != "" {
				t.Errorf("%s header %s (-want +got):\n%s", name, k, diff)
			}
		}
		if v := got.Get("X-Not-Propagated"); v != "" {
			t.Errorf("%s header X-Not-Propagated: got %q, want none", name, v)
		}
	}

	// Signed out, no end-user goes out, even if the client sends one.
	req, err = http.NewRequestWithContext(t.Context(), http.MethodGet, b.page.URL+"/logout", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Referer", b.page.URL+"/productpage")
	resp, err = noRedirect.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if c := resp.Cookies(); resp.StatusCode != http.StatusFound || len(c) != 1 || c[0].MaxAge >= 0 {
		t.Fatalf("GET /logout: got %d with cookies %v, want 302 deleting the user cookie", resp.StatusCode, c)
	}
	get(t, b.page, "/productpage", http.Header{"End-User": {"forged"}})
	for name, rec := range map[string]*recorder{"details": b.details, "reviews": b.reviews, "ratings": b.ratings} {
		reqs := rec.requests()
		if v := reqs[len(reqs)-1].Header.Get("End-User"); v != "" {
			t.Errorf("%s after sign-out: got end-user %q, want none", name, v)
		}
	}
}

// TestDegraded: when a service fails, the page still renders, with an
// error in place of that part, and the API answers the failure.
func TestDegraded(t *testing.T) {
	tests := []struct {
		name        string
		opts        options
		want        []string
		notWant     []string
		reviewCalls int
	}{
		{
			name:        "details down",
			opts:        options{down: map[string]bool{app.Details: true}},
			want:        []string{"Error fetching product details!", app.DetailsUnavailable, "Book Reviews", "Reviewer1"},
			notWant:     []string{"Book Details"},
			reviewCalls: 1,
		},
		{
			name:        "reviews down",
			opts:        options{down: map[string]bool{app.Reviews: true}},
			want:        []string{"Error fetching product reviews!", app.ReviewsUnavailable, "Book Details", "PublisherA"},
			notWant:     []string{"Book Reviews"},
			reviewCalls: 0,
		},
		{
			name:        "reviews 503 is asked twice",
			opts:        options{status: map[string]int{app.Reviews: http.StatusServiceUnavailable}},
			want:        []string{app.ReviewsUnavailable, "Book Details"},
			reviewCalls: 2,
		},
		{
			name:        "ratings down",
			opts:        options{version: "v3", down: map[string]bool{app.Ratings: true}},
			want:        []string{"Book Details", "Book Reviews", "Ratings service is currently unavailable"},
			notWant:     []string{`class="stars"`},
			reviewCalls: 1,
		},
		{
			name:        "ratings 500",
			opts:        options{version: "v2", status: map[string]int{app.Ratings: http.StatusInternalServerError}},
			want:        []string{"Book Reviews", "Ratings service is currently unavailable"},
			notWant:     []string{`class="stars"`},
			reviewCalls: 1,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b := startBookinfo(t, tc.opts)
			status, page := get(t, b.page, "/productpage", nil)
			if status != http.StatusOK {
				t.Fatalf("GET /productpage: got status %d, want 200", status)
			}
			for _, w := range tc.want {
				if !strings.Contains(page, w) {
					t.Errorf("product page: got no %q in\n%s", w, page)
				}
			}
			for _, w := range tc.notWant {
				if strings.Contains(page, w) {
					t.Errorf("product page: got %q, want none in\n%s", w, page)
				}
			}
			if got := len(b.reviews.requests()); got != tc.reviewCalls {
				t.Errorf("reviews: got %d requests, want %d", got, tc.reviewCalls)
			}
		})
	}
}

// TestProductAPI: the JSON API of productpage, including the status of a
// failed service.
func TestProductAPI(t *testing.T) {
	b := startBookinfo(t, options{
		down:   map[string]bool{app.Details: true},
		status: map[string]int{app.Reviews: http.StatusServiceUnavailable},
	})
	tests := []struct {
		path       string
		wantStatus int
		wantBody   string
	}{
		{"/api/v1/products", 200, `[{"id":0,"title":"The Comedy of Errors","descriptionHtml":` + mustJSON(t, mustProducts(t, b)) + `}]`},
		{"/api/v1/products/0", 500, `{"error":"` + app.DetailsUnavailable + `"}`},
		{"/api/v1/products/0/reviews", 503, `{"error":"` + app.ReviewsUnavailable + `"}`},
		{"/api/v1/products/0/ratings", 200, `{"id":0,"ratings":{"Reviewer1":5,"Reviewer2":4}}`},
		{"/api/v1/products/x/ratings", 400, `{"error":"` + app.RatingsUnavailable + `"}`},
		{"/health", 200, "Product page is healthy"},
	}
	for _, tc := range tests {
		t.Run(tc.path, func(t *testing.T) {
			status, body := get(t, b.page, tc.path, nil)
			if status != tc.wantStatus {
				t.Errorf("GET %s: got status %d, want %d", tc.path, status, tc.wantStatus)
			}
			if diff := cmp.Diff(tc.wantBody, strings.TrimSpace(body)); diff != "" {
				t.Errorf("GET %s body (-want +got):\n%s", tc.path, diff)
			}
		})
	}
	status, body := get(t, b.page, "/metrics", nil)
	if status != 200 || !strings.Contains(body, `request_result{destination_app="reviews",response_code="503"}`) {
		t.Errorf("GET /metrics: got %d, want 200 with request_result for reviews 503 in\n%s", status, body)
	}
}

func mustProducts(t *testing.T, b *bookinfo) string {
	t.Helper()
	_, body := get(t, b.page, "/api/v1/products", nil)
	var ps []app.Product
	if err := json.Unmarshal([]byte(body), &ps); err != nil || len(ps) != 1 {
		t.Fatalf("decode products %q: %v", body, err)
	}
	return ps[0].DescriptionHTML
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	var sb strings.Builder
	enc := json.NewEncoder(&sb)
	if err := enc.Encode(v); err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(sb.String())
}

// TestBackendAPIs: what details, reviews and ratings answer on their own.
func TestBackendAPIs(t *testing.T) {
	handler := func(service string, env map[string]string) http.Handler {
		cfg, err := app.ConfigFromEnv(service, func(k string) string { return env[k] })
		if err != nil {
			t.Fatal(err)
		}
		h, err := app.New(cfg, nil)
		if err != nil {
			t.Fatal(err)
		}
		return h
	}
	details := handler(app.Details, nil)
	ratings := handler(app.Ratings, nil)
	reviews := handler(app.Reviews, map[string]string{"HOSTNAME": "reviews-v1-abc"})
	tests := []struct {
		name       string
		h          http.Handler
		method     string
		path, body string
		wantStatus int
		wantBody   string
	}{
		{"details", details, "GET", "/details/0", "", 200,
			`{"id":0,"author":"William Shakespeare","year":1595,"type":"paperback","pages":200,"publisher":"PublisherA","language":"English","ISBN-10":"1234567890","ISBN-13":"123-1234567890"}`},
		{"details bad id", details, "GET", "/details/abc", "", 400, `{"error":"please provide numeric product id"}`},
		{"details health", details, "GET", "/health", "", 200, `{"status":"Details is healthy"}`},
		{"ratings", ratings, "GET", "/ratings/7", "", 200, `{"id":7,"ratings":{"Reviewer1":5,"Reviewer2":4}}`},
		{"ratings bad id", ratings, "GET", "/ratings/x", "", 400, `{"error":"please provide numeric product ID"}`},
		{"ratings post", ratings, "POST", "/ratings/1", `{"Reviewer1":1,"Reviewer2":2}`, 200, `{"id":1,"ratings":{"Reviewer1":1,"Reviewer2":2}}`},
		{"ratings after post", ratings, "GET", "/ratings/1", "", 200, `{"id":1,"ratings":{"Reviewer1":1,"Reviewer2":2}}`},
		{"ratings post bad json", ratings, "POST", "/ratings/1", `{`, 400, `{"error":"please provide valid ratings JSON"}`},
		{"ratings health", ratings, "GET", "/health", "", 200, `{"status":"Ratings is healthy"}`},
		{"reviews v1", reviews, "GET", "/reviews/0", "", 200,
			`{"id":"0","podname":"reviews-v1-abc","clustername":"","reviews":[` +
				`{"reviewer":"Reviewer1","text":"An extremely entertaining play by Shakespeare. The slapstick humour is refreshing!"},` +
				`{"reviewer":"Reviewer2","text":"Absolutely fun and entertaining. The play lacks thematic depth when compared to other plays by Shakespeare."}]}`},
		{"reviews health", reviews, "GET", "/health", "", 200, `{"status":"Reviews is healthy"}`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req := httptest.NewRequest(tc.method, tc.path, strings.NewReader(tc.body))
			rec := httptest.NewRecorder()
			tc.h.ServeHTTP(rec, req)
			if rec.Code != tc.wantStatus {
				t.Errorf("%s %s: got status %d, want %d", tc.method, tc.path, rec.Code, tc.wantStatus)
			}
			if diff := cmp.Diff(tc.wantBody, strings.TrimSpace(rec.Body.String())); diff != "" {
				t.Errorf("%s %s body (-want +got):\n%s", tc.method, tc.path, diff)
			}
		})
	}
}

func TestConfigFromEnv(t *testing.T) {
	tests := []struct {
		name    string
		service string
		env     map[string]string
		check   func(t *testing.T, c app.Config)
		wantErr string
	}{
		{name: "productpage defaults", service: app.Productpage, check: func(t *testing.T, c app.Config) {
			got := []string{c.Addr, c.DetailsURL(), c.ReviewsURL(), c.RatingsURL()}
			want := []string{":9080", "http://details:9080", "http://reviews:9080", "http://ratings:9080"}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("addresses (-want +got):\n%s", diff)
			}
		}},
		{name: "domain and hosts", service: app.Productpage,
			env: map[string]string{"SERVICES_DOMAIN": "shop.svc.cluster.local", "DETAILS_HOSTNAME": "d", "REVIEWS_SERVICE_PORT": "8080"},
			check: func(t *testing.T, c app.Config) {
				got := []string{c.DetailsURL(), c.ReviewsURL(), c.RatingsURL()}
				want := []string{"http://d.shop.svc.cluster.local:9080", "http://reviews.shop.svc.cluster.local:8080", "http://ratings.shop.svc.cluster.local:9080"}
				if diff := cmp.Diff(want, got); diff != "" {
					t.Errorf("URLs (-want +got):\n%s", diff)
				}
			}},
		{name: "reviews v1", service: app.Reviews, check: func(t *testing.T, c app.Config) {
			if c.Version != "v1" || c.EnableRatings {
				t.Errorf("got version %q ratings %v, want v1 without ratings", c.Version, c.EnableRatings)
			}
		}},
		{name: "reviews v2", service: app.Reviews, env: map[string]string{"SERVICE_VERSION": "v2"}, check: func(t *testing.T, c app.Config) {
			if !c.EnableRatings || c.StarColor != "black" || c.RatingsTimeout != 10*time.Second {
				t.Errorf("got ratings %v colour %q timeout %v, want true black 10s", c.EnableRatings, c.StarColor, c.RatingsTimeout)
			}
		}},
		{name: "reviews v3", service: app.Reviews, env: map[string]string{"SERVICE_VERSION": "v3"}, check: func(t *testing.T, c app.Config) {
			if !c.EnableRatings || c.StarColor != "red" || c.RatingsTimeout != 2500*time.Millisecond {
				t.Errorf("got ratings %v colour %q timeout %v, want true red 2.5s", c.EnableRatings, c.StarColor, c.RatingsTimeout)
			}
		}},
		{name: "reviews overrides", service: app.Reviews, env: map[string]string{"SERVICE_VERSION": "v2", "ENABLE_RATINGS": "false", "STAR_COLOR": "blue"},
			check: func(t *testing.T, c app.Config) {
				if c.EnableRatings || c.StarColor != "blue" {
					t.Errorf("got ratings %v colour %q, want false blue", c.EnableRatings, c.StarColor)
				}
			}},
		{name: "reviews bad version", service: app.Reviews, env: map[string]string{"SERVICE_VERSION": "v9"}, wantErr: `read SERVICE_VERSION "v9": want v1, v2 or v3 for reviews`},
		{name: "bad ENABLE_RATINGS", service: app.Reviews, env: map[string]string{"ENABLE_RATINGS": "maybe"}, wantErr: `read ENABLE_RATINGS "maybe": want true or false`},
		{name: "bad port", service: app.Productpage, env: map[string]string{"RATINGS_SERVICE_PORT": "tcp://10.0.0.1:9080"}, wantErr: `check config: ratings port "tcp://10.0.0.1:9080": want a number from 1 to 65535`},
		{name: "unknown service", service: "cart", wantErr: `check config: service "cart": want one of productpage, details, reviews, ratings`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := app.ConfigFromEnv(tc.service, func(k string) string { return tc.env[k] })
			if tc.wantErr != "" {
				if err == nil || err.Error() != tc.wantErr {
					t.Fatalf("got error %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("got error %v, want none", err)
			}
			tc.check(t, c)
		})
	}
}

// TestServeShutdown: Serve answers until its context ends, then returns
// nil.
func TestServeShutdown(t *testing.T) {
	h, err := app.New(app.Config{Service: app.Details, Addr: ":0", DetailsPort: "1", ReviewsPort: "1", RatingsPort: "1"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- app.Serve(ctx, l, h, nil) }()
	resp, err := http.Get("http://" + l.Addr().String() + "/health")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("GET /health: got %d, want 200", resp.StatusCode)
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Serve after cancel: got %v, want nil", err)
	}
}

// TestConnectionPerCall: productpage and reviews open a connection per
// call, as Istio's do, so that a Service balances every call anew.
func TestConnectionPerCall(t *testing.T) {
	b := startBookinfo(t, options{version: "v2"})
	for range 3 {
		if status, _ := get(t, b.page, "/productpage", nil); status != http.StatusOK {
			t.Fatalf("GET /productpage: got status %d, want 200", status)
		}
	}
	for name, rec := range map[string]*recorder{"details": b.details, "reviews": b.reviews, "ratings": b.ratings} {
		peers := map[string]bool{}
		for _, r := range rec.requests() {
			peers[r.RemoteAddr] = true
		}
		if len(peers) != 3 {
			t.Errorf("%s: got 3 calls from %d connections %v, want 3 connections", name, len(peers), peers)
		}
	}
}
