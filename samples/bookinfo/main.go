// Command bookinfo runs one service of the Bookinfo sample (package
// samples/bookinfo/app): `bookinfo productpage|details|reviews|ratings
// [--addr :9080] [--log-level info]`. The environment configures it as it
// configures Istio's Bookinfo images (SERVICE_VERSION=v1|v2|v3 for
// reviews, DETAILS_HOSTNAME, REVIEWS_HOSTNAME, RATINGS_HOSTNAME, ...).
//
// Started under the name of one of Istio's images (a link named
// examples-bookinfo-reviews-v2 to this program, say) and without a service
// argument, it is that image: reviews with SERVICE_VERSION v2 unless the
// environment sets another. That is how Istio's own bookinfo.yaml runs
// unchanged on Ambit's programs.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/ambitmesh/ambit/samples/bookinfo/app"
)

func main() {
	if err := run(os.Args[0], os.Args[1:], os.Getenv); err != nil {
		fmt.Fprintln(os.Stderr, "bookinfo:", err)
		os.Exit(1)
	}
}

var usage = "usage: bookinfo " + strings.Join(app.Services, "|") + " [--addr :9080] [--log-level debug|info|warn|error]"

func run(name string, args []string, getenv func(string) string) error {
	cfg, level, err := parse(name, args, getenv)
	if err != nil {
		return err
	}
	log := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	h, err := app.New(cfg, log)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return app.ListenAndServe(ctx, cfg.Addr, h, log)
}

// parse reads the service's configuration from the program's name (one
// of Istio's image names, see app.ParseImageName), its arguments and the
// environment.
func parse(name string, args []string, getenv func(string) string) (app.Config, slog.Level, error) {
	var level slog.Level
	if service, version, ok := app.ParseImageName(name); ok && (len(args) == 0 || strings.HasPrefix(args[0], "-")) {
		args = append([]string{service}, args...)
		env := getenv
		getenv = func(k string) string {
			if v := env(k); v != "" || k != "SERVICE_VERSION" {
				return v
			}
			return version
		}
	}
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		return app.Config{}, level, fmt.Errorf("no service\n%s", usage)
	}
	cfg, err := app.ConfigFromEnv(args[0], getenv)
	if err != nil {
		return app.Config{}, level, fmt.Errorf("%w\n%s", err, usage)
	}
	fs := flag.NewFlagSet(args[0], flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.StringVar(&cfg.Addr, "addr", cfg.Addr, "listen address")
	fs.TextVar(&level, "log-level", slog.LevelInfo, "log level")
	if err := fs.Parse(args[1:]); err != nil {
		return app.Config{}, level, fmt.Errorf("%w\n%s", err, usage)
	}
	if fs.NArg() > 0 {
		return app.Config{}, level, fmt.Errorf("unexpected arguments %q\n%s", fs.Args(), usage)
	}
	return cfg, level, nil
}
