package app

import (
	"context"
	"encoding/json"
	"fmt"
	"html/template"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Product is a book of the shop: GET /api/v1/products.
type Product struct {
	ID              int    `json:"id"`
	Title           string `json:"title"`
	DescriptionHTML string `json:"descriptionHtml"`
}

var products = []Product{{
	ID:    0,
	Title: "The Comedy of Errors",
	DescriptionHTML: `<a href="https://en.wikipedia.org/wiki/The_Comedy_of_Errors">Wikipedia Summary</a>: ` +
		`The Comedy of Errors is one of <b>William Shakespeare's</b> early plays. It is his shortest and one of his ` +
		`most farcical comedies, with a major part of the humour coming from slapstick and mistaken identity, in ` +
		`addition to puns and word play.`,
}}

// The messages productpage shows in place of a part whose service failed.
const (
	DetailsUnavailable = "Sorry, product details are currently unavailable for this book."
	ReviewsUnavailable = "Sorry, product reviews are currently unavailable for this book."
	RatingsUnavailable = "Sorry, product ratings are currently unavailable for this book."
)

// userCookie holds the signed-in user. Istio's productpage keeps the user
// in Flask's session cookie; sign-in there takes any password, so a signed
// cookie proves nothing more than this one does.
const userCookie = "user"

// productpage is the front end.
type productpage struct {
	cfg    Config
	log    *slog.Logger
	client *http.Client
	// results counts backend answers as Istio's productpage does:
	// request_result{destination_app, response_code}.
	results *prometheus.CounterVec
}

// NewProductpage returns the productpage service:
//
//	GET  /productpage                   the page of product 0, from details and reviews
//	GET  /api/v1/products               the products
//	GET  /api/v1/products/{id}          details' answer
//	GET  /api/v1/products/{id}/reviews  reviews' answer
//	GET  /api/v1/products/{id}/ratings  ratings' answer
//	POST /login (form field username)   sign in: later calls carry end-user
//	GET  /logout                        sign out
//	GET  /health, GET /metrics, GET /
//
// Calls to the other services carry the request's tracing and routing
// headers (see productpageForwarded) and end-user for a signed-in user.
// When a service fails, the page shows an error in place of its part and
// the API answers its status (500 when there was no answer).
func NewProductpage(cfg Config, log *slog.Logger) http.Handler {
	reg := prometheus.NewRegistry()
	p := &productpage{
		cfg:    cfg,
		log:    log,
		client: newClient(0),
		results: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "request_result", Help: "Results of requests to the other services.",
		}, []string{"destination_app", "response_code"}),
	}
	reg.MustRegister(p.results)
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", p.index)
	mux.HandleFunc("GET /index.html", p.index)
	mux.HandleFunc("GET /health", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "Product page is healthy")
	})
	mux.HandleFunc("POST /login", p.login)
	mux.HandleFunc("GET /logout", p.logout)
	mux.HandleFunc("GET /productpage", p.page)
	mux.HandleFunc("GET /api/v1/products", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, products)
	})
	mux.HandleFunc("GET /api/v1/products/{id}", p.api(Details, cfg.DetailsURL()+"/details/", DetailsUnavailable))
	mux.HandleFunc("GET /api/v1/products/{id}/reviews", p.api(Reviews, cfg.ReviewsURL()+"/reviews/", ReviewsUnavailable))
	mux.HandleFunc("GET /api/v1/products/{id}/ratings", p.api(Ratings, cfg.RatingsURL()+"/ratings/", RatingsUnavailable))
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	return mux
}

// user returns the signed-in user, "" if none.
func user(r *http.Request) string {
	c, err := r.Cookie(userCookie)
	if err != nil {
		return ""
	}
	u, err := url.QueryUnescape(c.Value)
	if err != nil {
		return ""
	}
	return u
}

// outboundHeaders are the headers of productpage's calls for request r.
func outboundHeaders(r *http.Request) http.Header {
	h := http.Header{}
	forward(h, r.Header, productpageForwarded)
	if u := user(r); u != "" {
		h.Set("end-user", u)
	}
	return h
}

// backTo is where login and logout send the browser: back where it came
// from, as Istio's do, or to the product page.
func backTo(r *http.Request) string {
	if ref := r.Referer(); ref != "" {
		return ref
	}
	return "/productpage"
}

func (p *productpage) login(w http.ResponseWriter, r *http.Request) {
	name := strings.TrimSpace(r.FormValue("username"))
	if name == "" {
		http.Error(w, "login: form field username is empty", http.StatusBadRequest)
		return
	}
	http.SetCookie(w, &http.Cookie{Name: userCookie, Value: url.QueryEscape(name), Path: "/", HttpOnly: true, SameSite: http.SameSiteLaxMode})
	http.Redirect(w, r, backTo(r), http.StatusFound)
}

func (p *productpage) logout(w http.ResponseWriter, r *http.Request) {
	http.SetCookie(w, &http.Cookie{Name: userCookie, Value: "", Path: "/", MaxAge: -1, HttpOnly: true, SameSite: http.SameSiteLaxMode})
	http.Redirect(w, r, backTo(r), http.StatusFound)
}

// call gets url with headers h. It returns the status and body of a 200
// answer; otherwise the status (500 when there was no answer) and err.
func (p *productpage) call(ctx context.Context, app, url string, h http.Header, attempts int) (int, []byte, error) {
	status, err := http.StatusInternalServerError, error(nil)
	for range attempts {
		var body []byte
		status, body, err = p.get(ctx, url, h)
		if err == nil {
			p.results.WithLabelValues(app, "200").Inc()
			return status, body, nil
		}
	}
	p.results.WithLabelValues(app, strconv.Itoa(status)).Inc()
	p.log.Warn("call "+app, logURL, url, logErr, err)
	return status, nil, err
}

func (p *productpage) get(ctx context.Context, url string, h http.Header) (int, []byte, error) {
	ctx, cancel := context.WithTimeout(ctx, p.cfg.BackendTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return http.StatusInternalServerError, nil, fmt.Errorf("get %s: %w", url, err)
	}
	req.Header = h.Clone()
	resp, err := p.client.Do(req)
	if err != nil {
		return http.StatusInternalServerError, nil, fmt.Errorf("get %s: %w", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return http.StatusInternalServerError, nil, fmt.Errorf("read %s: %w", url, err)
	}
	if resp.StatusCode != http.StatusOK {
		return resp.StatusCode, nil, fmt.Errorf("get %s: status %d", url, resp.StatusCode)
	}
	if !json.Valid(body) {
		return http.StatusInternalServerError, nil, fmt.Errorf("get %s: answer is not JSON", url)
	}
	return resp.StatusCode, body, nil
}

// attempts is how many times productpage asks a service. Istio's asks
// reviews twice, deliberately (its fault-injection task relies on it), and
// the others once.
func attempts(app string) int {
	if app == Reviews {
		return 2
	}
	return 1
}

// api proxies GET /api/v1/products/{id}... to a service, answering its
// JSON or the error message with its status.
func (p *productpage) api(app, base, unavailable string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		u := base + url.PathEscape(r.PathValue("id"))
		status, body, err := p.call(r.Context(), app, u, outboundHeaders(r), attempts(app))
		if err != nil {
			writeJSON(w, status, errorBody{unavailable})
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Write(body)
	}
}

// pageData is what the product page shows.
type pageData struct {
	User         string
	Product      Product
	Description  template.HTML
	Book         *Book
	DetailsError string
	Reviews      *ProductReviews
	ReviewsError string
}

func (p *productpage) page(w http.ResponseWriter, r *http.Request) {
	const id = 0
	d := pageData{User: user(r), Product: products[id], Description: template.HTML(products[id].DescriptionHTML)}
	h := outboundHeaders(r)
	var wg sync.WaitGroup
	wg.Go(func() {
		_, body, err := p.call(r.Context(), Details, fmt.Sprintf("%s/details/%d", p.cfg.DetailsURL(), id), h, attempts(Details))
		var b Book
		if err == nil && json.Unmarshal(body, &b) == nil {
			d.Book = &b
		} else {
			d.DetailsError = DetailsUnavailable
		}
	})
	wg.Go(func() {
		_, body, err := p.call(r.Context(), Reviews, fmt.Sprintf("%s/reviews/%d", p.cfg.ReviewsURL(), id), h, attempts(Reviews))
		var rv ProductReviews
		if err == nil && json.Unmarshal(body, &rv) == nil {
			d.Reviews = &rv
		} else {
			d.ReviewsError = ReviewsUnavailable
		}
	})
	wg.Wait()
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	if err := pageTemplate.Execute(w, d); err != nil {
		p.log.Warn("render product page", logErr, err)
	}
}

func (p *productpage) index(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	indexTemplate.Execute(w, p.cfg)
}

var funcs = template.FuncMap{
	"full":  func(n int) string { return strings.Repeat("★", min(max(n, 0), 5)) },
	"empty": func(n int) string { return strings.Repeat("☆", 5-min(max(n, 0), 5)) },
}

var pageTemplate = template.Must(template.New("productpage").Funcs(funcs).Parse(`<!DOCTYPE html>
<html>
<head>
<meta charset="utf-8">
<title>Simple Bookstore App</title>
</head>
<body>
<nav>
<strong>BookInfo Sample</strong>
{{if .User}}<span id="user">{{.User}} (<a href="logout">sign out</a>)</span>
{{else}}<form method="post" action="login" name="login_form">
<input type="text" name="username" placeholder="User Name">
<input type="password" name="passwd" placeholder="Password">
<button type="submit">Sign in</button>
</form>
{{end}}</nav>
<h3>{{.Product.Title}}</h3>
<p>Summary: {{.Description}}</p>
<div id="details">
{{with .Book}}<h4>Book Details</h4>
<dl>
<dt>Type:</dt><dd>{{.Type}}</dd>
<dt>Pages:</dt><dd>{{.Pages}}</dd>
<dt>Publisher:</dt><dd>{{.Publisher}}</dd>
<dt>Language:</dt><dd>{{.Language}}</dd>
<dt>ISBN-10:</dt><dd>{{.ISBN10}}</dd>
<dt>ISBN-13:</dt><dd>{{.ISBN13}}</dd>
</dl>
{{else}}<h4>Error fetching product details!</h4>
<p>{{.DetailsError}}</p>
{{end}}</div>
<div id="reviews">
{{with .Reviews}}<h4>Book Reviews</h4>
{{range .Reviews}}<blockquote>
<p>{{.Text}}</p>
<small>{{.Reviewer}}</small>
{{with .Rating}}{{if .Stars}}<span class="stars" style="color: {{.Color}}" data-color="{{.Color}}" data-stars="{{.Stars}}">{{full .Stars}}{{empty .Stars}}</span>
{{else if .Error}}<p><i>{{.Error}}</i></p>
{{end}}{{end}}</blockquote>
{{end}}<p>Reviews served by: <span id="reviews-pod">{{.Podname}}</span>{{with .Clustername}} on cluster {{.}}{{end}}</p>
{{else}}<h4>Error fetching product reviews!</h4>
<p>{{.ReviewsError}}</p>
{{end}}</div>
</body>
</html>
`))

var indexTemplate = template.Must(template.New("index").Parse(`<!DOCTYPE html>
<html>
<head>
<meta charset="utf-8">
<title>Simple Bookstore App</title>
</head>
<body>
<h3>Bookinfo: a book shop made of four services</h3>
<table>
<tr><th>service</th><th>calls</th></tr>
<tr><td>productpage</td><td>{{.DetailsURL}}/details, {{.ReviewsURL}}/reviews</td></tr>
<tr><td>reviews</td><td>{{.RatingsURL}}/ratings</td></tr>
</table>
<p><a href="productpage?u=normal">Normal user</a></p>
<p><a href="productpage?u=test">Test user</a></p>
</body>
</html>
`))
