package logging

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"
)

// Libraries is where the libraries' own loggers write: go-redis's (redis.SetLogger) and gRPC's
// (grpclog.SetLoggerV2) are process-wide globals of those libraries, installed once by the
// program, while the logger they should write to is known only after the configuration is
// read. Libraries holds that logger and can be pointed at it later (Use); until then it writes
// to the fallback given to NewLibraries. Every line stays a JSON line of the suite's log
// instead of the libraries' plain text on stderr.
type Libraries struct {
	l atomic.Pointer[slog.Logger]
}

// NewLibraries returns a destination that writes to fallback until Use is called.
func NewLibraries(fallback *slog.Logger) *Libraries {
	b := &Libraries{}
	b.l.Store(fallback)
	return b
}

// Use sends the libraries' lines to l from now on; each line names its library ("library").
// A nil Libraries (a test that runs a command without installing the library loggers, since a
// test binary may install them once) ignores it.
func (b *Libraries) Use(l *slog.Logger) {
	if b != nil {
		b.l.Store(l)
	}
}

func (b *Libraries) log(ctx context.Context, level slog.Level, library, msg string) {
	l := b.l.Load()
	if !l.Enabled(ctx, level) {
		return
	}
	l.LogAttrs(ctx, level, strings.TrimSpace(msg), slog.String("library", library))
}

// Redis is the logger for redis.SetLogger. go-redis logs only what went wrong beside a
// command's own error (a pool that cannot dial, a failed reconnect of a pub/sub, a
// cluster's state reload): at WARN.
func (b *Libraries) Redis() RedisLogger { return RedisLogger{b} }

// RedisLogger implements go-redis's internal.Logging.
type RedisLogger struct{ b *Libraries }

// Printf logs one go-redis line at WARN.
func (r RedisLogger) Printf(ctx context.Context, format string, v ...any) {
	r.b.log(ctx, slog.LevelWarn, "go-redis", fmt.Sprintf(format, v...))
}

// GRPC is the logger for grpclog.SetLoggerV2. gRPC's default logger prints errors only; so
// does this one at the info level: its info and warning lines (a subchannel's state, a
// connection attempt refused during an outage that the RPC's own error reports) are DEBUG.
func (b *Libraries) GRPC() GRPCLogger { return GRPCLogger{b} }

// GRPCLogger implements grpclog.LoggerV2 (gRPC itself exits after a Fatal line).
type GRPCLogger struct{ b *Libraries }

func (g GRPCLogger) out(level slog.Level, msg string) {
	g.b.log(context.Background(), level, "grpc", msg)
}

// Info logs at DEBUG.
func (g GRPCLogger) Info(args ...any) { g.out(slog.LevelDebug, fmt.Sprint(args...)) }

// Infoln logs at DEBUG.
func (g GRPCLogger) Infoln(args ...any) { g.out(slog.LevelDebug, fmt.Sprintln(args...)) }

// Infof logs at DEBUG.
func (g GRPCLogger) Infof(format string, args ...any) {
	g.out(slog.LevelDebug, fmt.Sprintf(format, args...))
}

// Warning logs at DEBUG, as gRPC's default logger hides warnings.
func (g GRPCLogger) Warning(args ...any) { g.out(slog.LevelDebug, fmt.Sprint(args...)) }

// Warningln logs at DEBUG.
func (g GRPCLogger) Warningln(args ...any) { g.out(slog.LevelDebug, fmt.Sprintln(args...)) }

// Warningf logs at DEBUG.
func (g GRPCLogger) Warningf(format string, args ...any) {
	g.out(slog.LevelDebug, fmt.Sprintf(format, args...))
}

// Error logs at ERROR.
func (g GRPCLogger) Error(args ...any) { g.out(slog.LevelError, fmt.Sprint(args...)) }

// Errorln logs at ERROR.
func (g GRPCLogger) Errorln(args ...any) { g.out(slog.LevelError, fmt.Sprintln(args...)) }

// Errorf logs at ERROR.
func (g GRPCLogger) Errorf(format string, args ...any) {
	g.out(slog.LevelError, fmt.Sprintf(format, args...))
}

// Fatal logs at ERROR; gRPC exits the process after it.
func (g GRPCLogger) Fatal(args ...any) { g.out(slog.LevelError, fmt.Sprint(args...)) }

// Fatalln logs at ERROR; gRPC exits the process after it.
func (g GRPCLogger) Fatalln(args ...any) { g.out(slog.LevelError, fmt.Sprintln(args...)) }

// Fatalf logs at ERROR; gRPC exits the process after it.
func (g GRPCLogger) Fatalf(format string, args ...any) {
	g.out(slog.LevelError, fmt.Sprintf(format, args...))
}

// V reports whether gRPC's verbose lines are wanted: never; they would be DEBUG lines no one
// asked for by LOG_LEVEL.
func (g GRPCLogger) V(int) bool { return false }

// NATSServer adapts l to an embedded nats-server's logger (Server.SetLogger), so `postamt up`'s
// NATS writes JSON lines too: its notices (the start banner) at DEBUG, warnings and errors as
// such, its debug and trace lines at DEBUG.
func NATSServer(l *slog.Logger) NATSServerLogger {
	return NATSServerLogger{l.With(slog.String("library", "nats-server"))}
}

// NATSServerLogger implements nats-server's server.Logger.
type NATSServerLogger struct{ l *slog.Logger }

func (n NATSServerLogger) out(level slog.Level, format string, v []any) {
	if n.l.Enabled(context.Background(), level) {
		n.l.Log(context.Background(), level, strings.TrimSpace(fmt.Sprintf(format, v...)))
	}
}

// Noticef logs at DEBUG: the server's notices are its start banner.
func (n NATSServerLogger) Noticef(format string, v ...any) { n.out(slog.LevelDebug, format, v) }

// Warnf logs at WARN.
func (n NATSServerLogger) Warnf(format string, v ...any) { n.out(slog.LevelWarn, format, v) }

// Fatalf logs at ERROR.
func (n NATSServerLogger) Fatalf(format string, v ...any) { n.out(slog.LevelError, format, v) }

// Errorf logs at ERROR.
func (n NATSServerLogger) Errorf(format string, v ...any) { n.out(slog.LevelError, format, v) }

// Debugf logs at DEBUG.
func (n NATSServerLogger) Debugf(format string, v ...any) { n.out(slog.LevelDebug, format, v) }

// Tracef logs at DEBUG.
func (n NATSServerLogger) Tracef(format string, v ...any) { n.out(slog.LevelDebug, format, v) }
