package app

import (
	"encoding/json"
	"io"
	"net/http"
	"strconv"
	"sync"
)

// ProductRatings is ratings' answer: stars (1 to 5) by reviewer.
type ProductRatings struct {
	ID      int            `json:"id"`
	Ratings map[string]int `json:"ratings"`
}

// NewRatings returns the ratings service (v1, in memory): GET
// /ratings/{id} answers the ratings of the product, Reviewer1 5 and
// Reviewer2 4 unless a POST /ratings/{id} with a JSON object of stars by
// reviewer replaced them; GET /health.
func NewRatings() http.Handler {
	var (
		mu    sync.Mutex
		added = map[int]map[string]int{}
	)
	get := func(id int) ProductRatings {
		mu.Lock()
		defer mu.Unlock()
		if r, ok := added[id]; ok {
			return ProductRatings{ID: id, Ratings: r}
		}
		return ProductRatings{ID: id, Ratings: map[string]int{"Reviewer1": 5, "Reviewer2": 4}}
	}
	productID := func(w http.ResponseWriter, r *http.Request) (int, bool) {
		id, err := strconv.Atoi(r.PathValue("id"))
		if err != nil {
			writeJSON(w, http.StatusBadRequest, errorBody{"please provide numeric product ID"})
			return 0, false
		}
		return id, true
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /health", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, statusBody{"Ratings is healthy"})
	})
	mux.HandleFunc("GET /ratings/{id}", func(w http.ResponseWriter, r *http.Request) {
		if id, ok := productID(w, r); ok {
			writeJSON(w, http.StatusOK, get(id))
		}
	})
	mux.HandleFunc("POST /ratings/{id}", func(w http.ResponseWriter, r *http.Request) {
		id, ok := productID(w, r)
		if !ok {
			return
		}
		var stars map[string]int
		body, err := io.ReadAll(io.LimitReader(r.Body, 64<<10))
		if err != nil || json.Unmarshal(body, &stars) != nil || stars == nil {
			writeJSON(w, http.StatusBadRequest, errorBody{"please provide valid ratings JSON"})
			return
		}
		mu.Lock()
		added[id] = stars
		mu.Unlock()
		writeJSON(w, http.StatusOK, get(id))
	})
	return mux
}
