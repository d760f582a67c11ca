// Command postamt is the suite's one binary: `postamt up` runs everything on one machine,
// `postamt serve SVC...` runs services as on Kubernetes, `postamt token` mints a development
// token, `postamt config` prints the configuration table, `postamt version` says what was built.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr, os.LookupEnv)
	stop()
	if err != nil && !errors.Is(err, flag.ErrHelp) {
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
  config             print the configuration variables as a Markdown table
  version            print the version
`

// run dispatches a command; everything the program does goes through here so it can be tested.
func run(ctx context.Context, args []string, stdout, stderr io.Writer, lookup func(string) (string, bool)) error {
	if len(args) == 0 {
		_, _ = fmt.Fprint(stderr, usage) // the error below is what counts
		return errors.New("no command given")
	}
	switch cmd, rest := args[0], args[1:]; cmd {
	case "up":
		return runUp(ctx, rest, stdout, stderr, lookup)
	case "serve":
		return runServe(ctx, rest, stderr, lookup)
	case "token":
		return runToken(ctx, rest, stdout, stderr, lookup)
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
