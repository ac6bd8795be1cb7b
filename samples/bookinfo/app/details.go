package app

import (
	"net/http"
	"strconv"
)

// Book is what details knows of a book: GET /details/{id}.
type Book struct {
	ID        int    `json:"id"`
	Author    string `json:"author"`
	Year      int    `json:"year"`
	Type      string `json:"type"`
	Pages     int    `json:"pages"`
	Publisher string `json:"publisher"`
	Language  string `json:"language"`
	ISBN10    string `json:"ISBN-10"`
	ISBN13    string `json:"ISBN-13"`
}

// NewDetails returns the details service: GET /details/{id} answers the
// book's details for any numeric id (there is one book), GET /health.
func NewDetails() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /health", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, statusBody{"Details is healthy"})
	})
	mux.HandleFunc("GET /details/{id}", func(w http.ResponseWriter, r *http.Request) {
		id, err := strconv.Atoi(r.PathValue("id"))
		if err != nil {
			writeJSON(w, http.StatusBadRequest, errorBody{"please provide numeric product id"})
			return
		}
		writeJSON(w, http.StatusOK, Book{
			ID: id, Author: "William Shakespeare", Year: 1595, Type: "paperback", Pages: 200,
			Publisher: "PublisherA", Language: "English", ISBN10: "1234567890", ISBN13: "123-1234567890",
		})
	})
	return mux
}
