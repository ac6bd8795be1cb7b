// Command bookinfo runs one service of the Bookinfo sample (package
// samples/bookinfo/app): `bookinfo productpage|details|reviews|ratings
// [--addr :9080] [--log-level info]`. The environment configures it as it
// configures Istio's Bookinfo images (SERVICE_VERSION=v1|v2|v3 for
// reviews, DETAILS_HOSTNAME, REVIEWS_HOSTNAME, RATINGS_HOSTNAME, ...).
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/ambitmesh/ambit/samples/bookinfo/app"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "bookinfo:", err)
		os.Exit(1)
	}
}

var usage = "usage: bookinfo " + strings.Join(app.Services, "|") + " [--addr :9080] [--log-level debug|info|warn|error]"

func run(args []string) error {
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		return fmt.Errorf("no service\n%s", usage)
	}
	cfg, err := app.ConfigFromEnv(args[0], os.Getenv)
	if err != nil {
		return fmt.Errorf("%w\n%s", err, usage)
	}
	fs := flag.NewFlagSet(args[0], flag.ContinueOnError)
	fs.StringVar(&cfg.Addr, "addr", cfg.Addr, "listen address")
	var level slog.Level
	fs.TextVar(&level, "log-level", slog.LevelInfo, "log level")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q\n%s", fs.Args(), usage)
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
