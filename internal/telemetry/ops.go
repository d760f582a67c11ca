package telemetry

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// opsShutdownTimeout bounds how long the ops server waits for open requests (a running profile)
// when its context ends.
const opsShutdownTimeout = 5 * time.Second

// OpsServer is the ops HTTP endpoint of a process, separate from the API port so it is never
// exposed with it: /metrics (Prometheus, from the given registry only), /debug/pprof/ and
// /healthz (200 while the process runs).
type OpsServer struct {
	addr string
	log  *slog.Logger
	srv  *http.Server
}

// NewOpsServer builds the ops server for addr; an empty addr disables it (Run then just waits).
// registry is the process's own registry, never Prometheus's global default, so what is exported
// is exactly what the process registered. A nil logger discards.
func NewOpsServer(addr string, registry *prometheus.Registry, logger *slog.Logger) *OpsServer {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(registry, promhttp.HandlerOpts{
		ErrorLog:      slog.NewLogLogger(logger.Handler(), slog.LevelError),
		ErrorHandling: promhttp.ContinueOnError,
	}))
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = w.Write([]byte("ok\n"))
	})
	return &OpsServer{
		addr: addr,
		log:  logger,
		srv: &http.Server{
			Handler:           mux,
			ReadHeaderTimeout: 10 * time.Second,
			ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
		},
	}
}

// Handler is the ops mux, for tests and for mounting elsewhere.
func (o *OpsServer) Handler() http.Handler { return o.srv.Handler }

// Run listens on the configured address and serves until ctx ends; see Serve.
func (o *OpsServer) Run(ctx context.Context) error {
	if o.addr == "" {
		<-ctx.Done()
		return nil
	}
	var lc net.ListenConfig
	lis, err := lc.Listen(ctx, "tcp", o.addr)
	if err != nil {
		return fmt.Errorf("ops server: listen on %s: %w", o.addr, err)
	}
	return o.Serve(ctx, lis)
}

// Serve serves on lis until ctx ends, then shuts down, giving open requests a few seconds. It
// returns nil after such a shutdown.
func (o *OpsServer) Serve(ctx context.Context, lis net.Listener) error {
	errc := make(chan error, 1)
	go func() { errc <- o.srv.Serve(lis) }()
	o.log.Debug("ops server listening", "addr", lis.Addr().String())
	select {
	case err := <-errc:
		return fmt.Errorf("ops server on %s: %w", lis.Addr(), err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), opsShutdownTimeout)
	defer cancel()
	err := o.srv.Shutdown(sctx)
	if serr := <-errc; serr != nil && !errors.Is(serr, http.ErrServerClosed) && err == nil {
		err = serr
	}
	if err != nil {
		_ = o.srv.Close()
		return fmt.Errorf("ops server shutdown: %w", err)
	}
	return nil
}
