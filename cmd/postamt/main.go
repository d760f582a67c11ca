// Command postamt is the suite's one binary: `postamt up` runs everything on one machine,
// `postamt serve SVC...` runs services as on Kubernetes, `postamt token` mints a development
// token, `postamt jwks` builds the JWKS of the services' signing keys, `postamt config` prints
// the configuration table, `postamt version` says what was built.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"slices"
	"syscall"

	"github.com/postamt/postamt/internal/logging"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr, os.LookupEnv)
	stop()
	if err != nil && !errors.Is(err, flag.ErrHelp) && !errors.Is(err, errLogged) {
		fmt.Fprintln(os.Stderr, "postamt:", err)
		os.Exit(1)
	}
}

const usage = `usage: postamt <command> [flags]

commands:
  up                 run the whole suite on this machine (embedded NATS, Redis from REDIS_URL
                     or a redis-server of its own, data under ./data), and print a quick start
  serve SERVICE...   run services with configuration from the environment (mailbox)
  token              mint a development token
  jwks KEY.pem...    print the JWKS (AUTH_JWKS_FILE) of the services' public signing keys
  config             print the configuration variables as a Markdown table
  version            print the version
`

// errLogged is an error that has been written to the log already: main exits with status 1
// without printing it again.
var errLogged = errors.New("logged")

// logged writes a serving command's error as the last line of its JSON log, so that every line
// a service writes is JSON, its reason for stopping too, and returns errLogged.
func logged(stderr io.Writer, err error) error {
	if err == nil || errors.Is(err, flag.ErrHelp) {
		return err
	}
	slog.New(slog.NewJSONHandler(stderr, nil)).Error("postamt: stopped", "error", err.Error())
	return fmt.Errorf("%w: %w", errLogged, err)
}

// run installs the libraries' process-wide loggers (see installLibraryLoggers) and runs the
// command.
func run(ctx context.Context, args []string, stdout, stderr io.Writer, lookup func(string) (string, bool)) error {
	return execute(ctx, args, stdout, stderr, lookup, installLibraryLoggers(stderr))
}

// execute dispatches a command; everything the program does goes through here so it can be
// tested. libs are the library loggers the process installed once, before gRPC or go-redis ran:
// a test binary installs them in TestMain and runs every command through here, since setting
// gRPC's logger while an earlier test's connections still log is a data race.
func execute(ctx context.Context, args []string, stdout, stderr io.Writer, lookup func(string) (string, bool), libs *logging.Libraries) error {
	if len(args) == 0 {
		_, _ = fmt.Fprint(stderr, usage) // the error below is what counts
		return errors.New("no command given")
	}
	switch cmd, rest := args[0], args[1:]; cmd {
	case "up":
		return runUp(ctx, rest, stdout, stderr, lookup, libs)
	case "serve":
		if len(rest) == 1 && !slices.Contains(knownServices, rest[0]) {
			return fmt.Errorf("unknown service %q; known: %v", rest[0], knownServices)
		}
		return logged(stderr, runServe(ctx, rest, stderr, lookup, libs))
	case "token":
		return runToken(ctx, rest, stdout, stderr, lookup)
	case "jwks":
		return runJWKS(rest, stdout, stderr)
	case "config":
		return runConfig(stdout)
	case "version":
		_, err := fmt.Fprintln(stdout, "postamt", version)
		return err
	case "help", "-h", "--help":
		_, _ = fmt.Fprint(stdout, usage) // help on a closed stdout: nothing to report it on
		return nil
	default:
		_, _ = fmt.Fprint(stderr, usage) // the error below is what counts
		return fmt.Errorf("unknown command %q", cmd)
	}
}
