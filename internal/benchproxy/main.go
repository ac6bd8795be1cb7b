// Command benchproxy is Go's net/http/httputil.ReverseProxy as one HTTP
// hop between a TLS client and a TLS backend (mutual TLS 1.3 on both
// sides, HTTP/1.1, keep-alive), nothing more: the baseline the waypoint
// benchmark (waypoint's BenchmarkProxies) runs in the waypoint's place.
// It is a program of its own so that it can be pinned to a core and its
// CPU time read from /proc like the other proxies'.
package main

import (
	"crypto/tls"
	"crypto/x509"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"time"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:8443", "address of the TLS listener")
	backend := flag.String("backend", "", "the backend's TLS address, host:port")
	serverName := flag.String("server-name", "localhost", "name the backend's certificate must carry")
	certFile := flag.String("cert", "", "PEM certificate, served to clients and presented to the backend")
	keyFile := flag.String("key", "", "PEM key of --cert")
	caFile := flag.String("ca", "", "PEM CA that signs clients' and the backend's certificates")
	flag.Parse()
	if err := run(*listen, *backend, *serverName, *certFile, *keyFile, *caFile); err != nil {
		fmt.Fprintln(os.Stderr, "benchproxy:", err)
		os.Exit(1)
	}
}

func run(listen, backend, serverName, certFile, keyFile, caFile string) error {
	if backend == "" {
		return fmt.Errorf("no backend: set --backend")
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return fmt.Errorf("load certificate: %w", err)
	}
	caPEM, err := os.ReadFile(caFile)
	if err != nil {
		return fmt.Errorf("read ca: %w", err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(caPEM) {
		return fmt.Errorf("read ca %s: no PEM certificate", caFile)
	}
	var h1 http.Protocols
	h1.SetHTTP1(true)
	target := &url.URL{Scheme: "https", Host: backend}
	rp := &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) { r.SetURL(target); r.Out.Host = r.In.Host },
		Transport: &http.Transport{
			Protocols:           &h1,
			MaxIdleConns:        1024,
			MaxIdleConnsPerHost: 1024,
			IdleConnTimeout:     time.Minute,
			TLSClientConfig: &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: roots, ServerName: serverName,
				MinVersion: tls.VersionTLS13},
		},
		ErrorLog: log.New(io.Discard, "", 0),
	}
	srv := &http.Server{
		Handler:           rp,
		Protocols:         &h1,
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          log.New(io.Discard, "", 0),
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}, ClientCAs: roots,
			ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS13},
	}
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return fmt.Errorf("listen %s: %w", listen, err)
	}
	return srv.ServeTLS(ln, "", "")
}
