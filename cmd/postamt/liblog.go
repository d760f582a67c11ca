package main

import (
	"io"
	"log/slog"

	"github.com/redis/go-redis/v9"
	"google.golang.org/grpc/grpclog"

	"github.com/postamt/postamt/internal/logging"
)

// installLibraryLoggers points go-redis's and gRPC's own loggers into the suite's JSON log, so a
// Redis outage writes JSON lines, not go-redis's plain `redis: … pool.go:770 …` text. Both are
// the libraries' process-wide globals (redis.SetLogger, grpclog.SetLoggerV2; neither library
// takes a logger per client or server), which is why run sets them, and only there: once per
// process, before any client or server exists (gRPC's is not synchronised and must be set
// before gRPC runs; the test binary sets them in TestMain and runs commands through execute).
// Until the command has read its configuration and calls Use, the lines go to stderr as JSON.
func installLibraryLoggers(stderr io.Writer) *logging.Libraries {
	libs := logging.NewLibraries(slog.New(slog.NewJSONHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
	redis.SetLogger(libs.Redis())
	grpclog.SetLoggerV2(libs.GRPC())
	return libs
}
