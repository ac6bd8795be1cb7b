// Command echo is the test workload: `echo serve` runs the TCP and HTTP
// report server (and, with --grpc, the gRPC TestService); `echo tcp ADDR MESSAGE` and `echo http URL` are clients
// that print the server's report as JSON.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/ambitmesh/ambit/internal/echo"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "echo:", err)
		os.Exit(1)
	}
}

const usage = `usage:
  echo serve [--tcp :9000,...] [--http :8080,...] [--grpc :7070,...]
  echo tcp ADDR MESSAGE
  echo http [--header K=V]... [--body] URL
  echo probe [--interval 100ms] [--duration 1m] URL`

func run(args []string) error {
	if len(args) == 0 {
		return fmt.Errorf("no command\n%s", usage)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	switch args[0] {
	case "serve":
		fs := flag.NewFlagSet("serve", flag.ContinueOnError)
		tcp := fs.String("tcp", ":9000", "comma-separated TCP listen addresses")
		web := fs.String("http", ":8080", "comma-separated HTTP listen addresses")
		rpc := fs.String("grpc", "", "comma-separated gRPC listen addresses (none by default)")
		if err := fs.Parse(args[1:]); err != nil {
			return err
		}
		host, ns := echo.Identity()
		s := &echo.Server{
			TCPAddrs: split(*tcp), HTTPAddrs: split(*web), GRPCAddrs: split(*rpc),
			Hostname: host, Namespace: ns,
			Log: slog.New(slog.NewJSONHandler(os.Stderr, nil)),
		}
		return s.ListenAndServe(ctx)
	case "tcp":
		if len(args) != 3 {
			return fmt.Errorf("tcp wants ADDR MESSAGE\n%s", usage)
		}
		ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		rep, err := echo.TCP(ctx, args[1], args[2])
		if err != nil {
			return err
		}
		return json.NewEncoder(os.Stdout).Encode(rep)
	case "http":
		fs := flag.NewFlagSet("http", flag.ContinueOnError)
		h := http.Header{}
		fs.Func("header", "request header K=V (repeatable)", func(v string) error {
			k, val, ok := strings.Cut(v, "=")
			if !ok {
				return fmt.Errorf("header %q: want K=V", v)
			}
			h.Add(k, val)
			return nil
		})
		body := fs.Bool("body", false, "print the response body as it is (any server, not only echo)")
		if err := fs.Parse(args[1:]); err != nil {
			return err
		}
		if fs.NArg() != 1 {
			return fmt.Errorf("http wants one URL\n%s", usage)
		}
		ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		if *body {
			return echo.Fetch(ctx, nil, fs.Arg(0), h, os.Stdout)
		}
		rep, err := echo.HTTP(ctx, nil, fs.Arg(0), h)
		if err != nil {
			return err
		}
		return json.NewEncoder(os.Stdout).Encode(rep)
	case "probe":
		fs := flag.NewFlagSet("probe", flag.ContinueOnError)
		interval := fs.Duration("interval", 100*time.Millisecond, "time between requests of each client")
		duration := fs.Duration("duration", time.Minute, "how long to probe")
		if err := fs.Parse(args[1:]); err != nil {
			return err
		}
		if fs.NArg() != 1 {
			return fmt.Errorf("probe wants one URL\n%s", usage)
		}
		ctx, cancel := context.WithTimeout(ctx, *duration)
		defer cancel()
		return echo.Probe(ctx, fs.Arg(0), *interval, os.Stdout)
	default:
		return fmt.Errorf("unknown command %q\n%s", args[0], usage)
	}
}

func split(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}
