// Package app is the Bookinfo sample in Go: the four services of Istio's
// Bookinfo (productpage, details, reviews in versions v1, v2 and v3, and
// ratings) with the same HTTP API, the same call graph and the same
// header propagation, so that Istio's Bookinfo tasks (request routing by
// the end-user header, traffic shifting between reviews versions, fault
// injection, authorization policies) behave on Ambit as they do on Istio.
//
// The call graph: productpage calls details and reviews; reviews v2 and v3
// call ratings (v2 shows black stars, v3 red ones); reviews v1 calls
// nothing.
package app

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// The services, as the first argument of the bookinfo command names them.
const (
	Productpage = "productpage"
	Details     = "details"
	Reviews     = "reviews"
	Ratings     = "ratings"
)

// Services lists the four services.
var Services = []string{Productpage, Details, Reviews, Ratings}

// DefaultPort is the port every Bookinfo service listens on.
const DefaultPort = "9080"

// Config is how one Bookinfo service runs. ConfigFromEnv fills it from the
// environment variables Istio's Bookinfo images read.
type Config struct {
	// Service is one of Productpage, Details, Reviews, Ratings.
	Service string
	// Addr is the listen address, ":9080" by default.
	Addr string

	// Where productpage and reviews find the other services:
	// http://<host><.ServicesDomain>:<port>.
	ServicesDomain string
	DetailsHost    string
	DetailsPort    string
	ReviewsHost    string
	ReviewsPort    string
	RatingsHost    string
	RatingsPort    string

	// Version is the service version (SERVICE_VERSION). For reviews it
	// sets the defaults of EnableRatings and StarColor: v1 calls no
	// ratings, v2 shows black stars, v3 red ones.
	Version string
	// EnableRatings makes reviews call ratings.
	EnableRatings bool
	// StarColor is the colour reviews gives its ratings.
	StarColor string
	// RatingsTimeout bounds reviews' call to ratings: 10s for black stars
	// and 2.5s otherwise, as in Istio's reviews.
	RatingsTimeout time.Duration
	// BackendTimeout bounds each of productpage's calls: 3s.
	BackendTimeout time.Duration

	// PodName and ClusterName go into reviews' answers.
	PodName     string
	ClusterName string
}

// ConfigFromEnv builds the configuration of service from environment
// variables, read with getenv (os.Getenv): SERVICES_DOMAIN,
// DETAILS_HOSTNAME, DETAILS_SERVICE_PORT, REVIEWS_HOSTNAME,
// REVIEWS_SERVICE_PORT, RATINGS_HOSTNAME, RATINGS_SERVICE_PORT,
// SERVICE_VERSION, ENABLE_RATINGS, STAR_COLOR, HOSTNAME and CLUSTER_NAME,
// with Istio's defaults.
func ConfigFromEnv(service string, getenv func(string) string) (Config, error) {
	or := func(key, def string) string {
		if v := getenv(key); v != "" {
			return v
		}
		return def
	}
	c := Config{
		Service:        service,
		Addr:           ":" + DefaultPort,
		ServicesDomain: getenv("SERVICES_DOMAIN"),
		DetailsHost:    or("DETAILS_HOSTNAME", Details),
		DetailsPort:    or("DETAILS_SERVICE_PORT", DefaultPort),
		ReviewsHost:    or("REVIEWS_HOSTNAME", Reviews),
		ReviewsPort:    or("REVIEWS_SERVICE_PORT", DefaultPort),
		RatingsHost:    or("RATINGS_HOSTNAME", Ratings),
		RatingsPort:    or("RATINGS_SERVICE_PORT", DefaultPort),
		Version:        or("SERVICE_VERSION", "v1"),
		PodName:        getenv("HOSTNAME"),
		ClusterName:    getenv("CLUSTER_NAME"),
		BackendTimeout: 3 * time.Second,
	}
	if service == Reviews {
		switch c.Version {
		case "v1":
		case "v2":
			c.EnableRatings, c.StarColor = true, "black"
		case "v3":
			c.EnableRatings, c.StarColor = true, "red"
		default:
			return Config{}, fmt.Errorf("read SERVICE_VERSION %q: want v1, v2 or v3 for reviews", c.Version)
		}
	}
	if v := getenv("ENABLE_RATINGS"); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return Config{}, fmt.Errorf("read ENABLE_RATINGS %q: want true or false", v)
		}
		c.EnableRatings = b
	}
	c.StarColor = or("STAR_COLOR", c.StarColor)
	if c.StarColor == "" {
		c.StarColor = "black"
	}
	c.RatingsTimeout = 2500 * time.Millisecond
	if c.StarColor == "black" {
		c.RatingsTimeout = 10 * time.Second
	}
	return c, c.Validate()
}

// Validate checks the fields a service needs.
func (c Config) Validate() error {
	known := false
	for _, s := range Services {
		known = known || s == c.Service
	}
	if !known {
		return fmt.Errorf("check config: service %q: want one of %s", c.Service, strings.Join(Services, ", "))
	}
	if c.Addr == "" {
		return errors.New("check config: no listen address")
	}
	for name, port := range map[string]string{"details": c.DetailsPort, "reviews": c.ReviewsPort, "ratings": c.RatingsPort} {
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
			return fmt.Errorf("check config: %s port %q: want a number from 1 to 65535", name, port)
		}
	}
	return nil
}

func (c Config) baseURL(host, port string) string {
	if c.ServicesDomain != "" {
		host += "." + c.ServicesDomain
	}
	return "http://" + host + ":" + port
}

// DetailsURL, ReviewsURL and RatingsURL are the base URLs of the other
// services.
func (c Config) DetailsURL() string { return c.baseURL(c.DetailsHost, c.DetailsPort) }

// ReviewsURL is the base URL of reviews.
func (c Config) ReviewsURL() string { return c.baseURL(c.ReviewsHost, c.ReviewsPort) }

// RatingsURL is the base URL of ratings.
func (c Config) RatingsURL() string { return c.baseURL(c.RatingsHost, c.RatingsPort) }
