package app

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
)

// ProductReviews is reviews' answer: GET /reviews/{id}. ID is a string, as
// in Istio's reviews.
type ProductReviews struct {
	ID          string   `json:"id"`
	Podname     string   `json:"podname"`
	Clustername string   `json:"clustername"`
	Reviews     []Review `json:"reviews"`
}

// Review is one reviewer's review. Rating is there when the reviews
// version shows ratings (v2, v3).
type Review struct {
	Reviewer string  `json:"reviewer"`
	Text     string  `json:"text"`
	Rating   *Rating `json:"rating,omitempty"`
}

// Rating is the stars of a review in the version's colour, or the error
// that took their place when ratings did not answer.
type Rating struct {
	Stars int    `json:"stars,omitempty"`
	Color string `json:"color,omitempty"`
	Error string `json:"error,omitempty"`
}

// ratingsUnavailable replaces the stars when ratings cannot be reached.
const ratingsUnavailable = "Ratings service is currently unavailable"

var reviewTexts = []struct{ reviewer, text string }{
	{"Reviewer1", "An extremely entertaining play by Shakespeare. The slapstick humour is refreshing!"},
	{"Reviewer2", "Absolutely fun and entertaining. The play lacks thematic depth when compared to other plays by Shakespeare."},
}

// NewReviews returns the reviews service: GET /reviews/{id} answers the
// two reviews of the product; with cfg.EnableRatings (v2, v3) it asks
// ratings for their stars, passing on the tracing and routing headers, and
// shows them in cfg.StarColor, or an error in their place if ratings fails.
// GET /health.
func NewReviews(cfg Config, log *slog.Logger) http.Handler {
	client := newClient(cfg.RatingsTimeout)
	ratingsURL := cfg.RatingsURL()
	mux := http.NewServeMux()
	mux.HandleFunc("GET /health", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, statusBody{"Reviews is healthy"})
	})
	mux.HandleFunc("GET /reviews/{id}", func(w http.ResponseWriter, r *http.Request) {
		id, err := strconv.Atoi(r.PathValue("id"))
		if err != nil {
			writeJSON(w, http.StatusBadRequest, errorBody{"please provide numeric product id"})
			return
		}
		var stars map[string]int
		if cfg.EnableRatings {
			url := fmt.Sprintf("%s/ratings/%d", ratingsURL, id)
			if stars, err = fetchRatings(r.Context(), client, url, r.Header); err != nil {
				log.Warn("get ratings", logURL, url, logErr, err)
			}
		}
		out := ProductReviews{ID: strconv.Itoa(id), Podname: cfg.PodName, Clustername: cfg.ClusterName}
		for _, t := range reviewTexts {
			rv := Review{Reviewer: t.reviewer, Text: t.text}
			if cfg.EnableRatings {
				if n, ok := stars[t.reviewer]; ok {
					rv.Rating = &Rating{Stars: n, Color: cfg.StarColor}
				} else {
					rv.Rating = &Rating{Error: ratingsUnavailable}
				}
			}
			out.Reviews = append(out.Reviews, rv)
		}
		writeJSON(w, http.StatusOK, out)
	})
	return mux
}

// fetchRatings gets the stars by reviewer from ratings.
func fetchRatings(ctx context.Context, client *http.Client, url string, in http.Header) (map[string]int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, fmt.Errorf("get %s: %w", url, err)
	}
	forward(req.Header, in, reviewsForwarded)
	req.Header.Set("Accept", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("get %s: %w", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", url, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("get %s: status %d", url, resp.StatusCode)
	}
	var pr ProductRatings
	if err := json.Unmarshal(body, &pr); err != nil {
		return nil, fmt.Errorf("decode ratings from %s: %w", url, err)
	}
	return pr.Ratings, nil
}
