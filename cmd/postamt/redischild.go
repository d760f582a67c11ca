package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// redisChild is the redis-server `postamt up` runs when no REDIS_URL is given, supervised: its
// exit is reaped at once (no <defunct> process), and unless up is stopping, the server is
// started again on the same port and data (its AOF), with a growing pause between tries, so
// the services, whose clients keep dialling that port, become ready again by themselves. Each
// exit and restart is said on the terminal and logged.
type redisChild struct {
	bin, dir string
	port     int
	log      *slog.Logger
	say      func(format string, args ...any)

	quit chan struct{} // closed by stop
	done chan struct{} // closed when supervise has returned

	mu  sync.Mutex
	cmd *exec.Cmd // the running server, nil between a exit and the restart
}

// startRedis runs a redis-server with its data (AOF) in dir on a free loopback port, waits until
// it answers, and supervises it until stop.
func startRedis(ctx context.Context, dir string, log *slog.Logger, say func(string, ...any)) (*redisChild, error) {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		//lint:ignore ST1005 Redis is a name
		return nil, errors.New("Redis is needed: set REDIS_URL to a running Redis, or install redis-server " +
			"(Debian/Ubuntu: sudo apt-get install redis-server; macOS: brew install redis)")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil { //nolint:gosec // G301: under the developer's ./data, see runUp
		return nil, fmt.Errorf("create redis data directory: %w", err)
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	r := &redisChild{bin: bin, dir: dir, port: port, log: log, say: say, quit: make(chan struct{}), done: make(chan struct{})}
	cmd, err := r.spawn()
	if err != nil {
		return nil, err
	}
	go r.supervise(cmd)
	if err := r.awaitPing(ctx, 15*time.Second); err != nil {
		r.stop()
		return nil, err
	}
	return r, nil
}

// url is the server's address for REDIS_URL.
func (r *redisChild) url() string { return fmt.Sprintf("redis://127.0.0.1:%d/0", r.port) }

// pidFile is where the server writes its process id (for a person, and for TestUp).
func (r *redisChild) pidFile() string { return filepath.Join(r.dir, "redis.pid") }

// spawn starts a server process, unless stop was called.
func (r *redisChild) spawn() (*exec.Cmd, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	select {
	case <-r.quit:
		return nil, errors.New("stopping")
	default:
	}
	cmd := exec.Command(r.bin, "--bind", "127.0.0.1", "--port", strconv.Itoa(r.port), "--dir", r.dir, //nolint:gosec,noctx // G204: redis-server from PATH, arguments made here; no ctx: stop ends it with SIGINT so it flushes its AOF
		"--appendonly", "yes", "--save", "", "--protected-mode", "yes",
		"--logfile", filepath.Join(r.dir, "redis.log"), "--pidfile", r.pidFile())
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start redis-server: %w", err)
	}
	r.cmd = cmd
	return cmd, nil
}

// supervise waits for each server process (reaping it) and starts the next until stop.
//
//nolint:contextcheck // supervision ends with stop (quit), after up's context: it must outlive it to stop the server last
func (r *redisChild) supervise(cmd *exec.Cmd) {
	defer close(r.done)
	pause := 250 * time.Millisecond
	for {
		started := time.Now()
		err := cmd.Wait()
		r.mu.Lock()
		r.cmd = nil
		r.mu.Unlock()
		select {
		case <-r.quit:
			return
		default:
		}
		if time.Since(started) > time.Minute {
			pause = 250 * time.Millisecond // it ran well: a new failure starts the pauses afresh
		}
		r.log.Error("redis-server exited; restarting it", "pid", cmd.Process.Pid, "exit", exitText(err), "log", filepath.Join(r.dir, "redis.log"))
		r.say("redis-server (pid %d) exited (%s); restarting it on port %d", cmd.Process.Pid, exitText(err), r.port)
		for {
			select {
			case <-r.quit:
				return
			case <-time.After(pause):
			}
			pause = min(2*pause, 10*time.Second)
			next, err := r.spawn()
			if err == nil {
				cmd = next
				break
			}
			r.log.Error("redis-server could not be started again; retrying", "error", err, "retry_in", pause)
			r.say("redis-server could not be started again (%v); retrying in %s", err, pause)
		}
		go func(pid int) {
			ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
			defer cancel()
			if err := r.awaitPing(ctx, 15*time.Second); err == nil {
				r.log.Info("redis-server is back", "pid", pid)
				r.say("redis-server is back (pid %d); the services reconnect by themselves", pid)
			}
		}(cmd.Process.Pid)
	}
}

// awaitPing waits until the server answers PING, for at most limit.
func (r *redisChild) awaitPing(ctx context.Context, limit time.Duration) error {
	c := redis.NewClient(&redis.Options{Addr: fmt.Sprintf("127.0.0.1:%d", r.port), MaxRetries: -1})
	defer c.Close() // a probe's client; its error changes nothing
	deadline := time.Now().Add(limit)
	for {
		if err := c.Ping(ctx).Err(); err == nil {
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("redis-server did not answer on port %d; see %s", r.port, filepath.Join(r.dir, "redis.log"))
		}
		select {
		case <-ctx.Done():
		case <-r.quit:
			return errors.New("stopping")
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// stop ends supervision and the server (SIGINT: it flushes its AOF) and waits for both.
func (r *redisChild) stop() {
	r.mu.Lock()
	close(r.quit)
	if r.cmd != nil {
		_ = r.cmd.Process.Signal(os.Interrupt)
	}
	r.mu.Unlock()
	<-r.done
}

func exitText(err error) string {
	if err == nil {
		return "exit status 0"
	}
	return err.Error()
}
