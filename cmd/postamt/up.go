package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	natsserver "github.com/nats-io/nats-server/v2/server"
	"github.com/redis/go-redis/v9"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/postamt/postamt/internal/auth"
	mailboxv1 "github.com/postamt/postamt/proto/gen/postamt/mailbox/v1"
)

// devTenant is the tenant `postamt up` creates so the printed quick start works when pasted.
const devTenant = "dev"

// runUp runs the whole suite on this machine. Defaults suit a laptop: loopback addresses, data
// under ./data, a development signing secret kept in ./data/dev-secret so tokens survive restarts.
func runUp(ctx context.Context, args []string, stdout, stderr io.Writer, lookup func(string) (string, bool)) error {
	fs := flag.NewFlagSet("up", flag.ContinueOnError)
	fs.SetOutput(stderr)
	dataDir := fs.String("data", "data", "directory for NATS and Redis data and the development secret")
	grpcAddr := fs.String("grpc", "127.0.0.1:8090", "address of the mailbox gRPC API")
	opsAddr := fs.String("ops", "127.0.0.1:8091", "address of metrics and pprof")
	if err := fs.Parse(args); err != nil {
		return err
	}
	// Absolute, because redis-server resolves its log file after changing into its data directory.
	dir, err := filepath.Abs(*dataDir)
	if err != nil {
		return fmt.Errorf("data directory: %w", err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create data directory: %w", err)
	}
	secret, err := devSecret(filepath.Join(dir, "dev-secret"), lookup)
	if err != nil {
		return err
	}

	ns, err := startNATS(filepath.Join(dir, "nats"))
	if err != nil {
		return err
	}
	defer func() {
		ns.Shutdown()
		ns.WaitForShutdown()
	}()

	redisURL, hasURL := lookup("REDIS_URL")
	if !hasURL || redisURL == "" {
		url, stopRedis, err := startRedis(ctx, filepath.Join(dir, "redis"), stderr)
		if err != nil {
			return err
		}
		defer stopRedis()
		redisURL = url
	}

	env := map[string]string{
		"GRPC_ADDR":         *grpcAddr,
		"OPS_ADDR":          *opsAddr,
		"REDIS_URL":         redisURL,
		"NATS_URL":          ns.ClientURL(),
		"AUTH_HS256_SECRET": secret,
		"DRAIN_DELAY":       "0s",
	}
	upLookup := func(k string) (string, bool) {
		if v, ok := lookup(k); ok && k != "REDIS_URL" && k != "NATS_URL" {
			return v, true
		}
		v, ok := env[k]
		return v, ok
	}

	ready := make(chan struct{})
	errc := make(chan error, 1)
	go func() { errc <- serve(ctx, []string{"mailbox"}, stderr, upLookup, ready) }()
	select {
	case err := <-errc:
		return err
	case <-ready:
	}
	signer, err := auth.NewSigner(auth.Config{HS256Secret: secret, Audience: "postamt"})
	if err != nil {
		return fmt.Errorf("dev signer: %w", err)
	}
	token, err := signer.Mint(auth.Principal{Tenant: devTenant, User: "dev-admin", Roles: []string{"admin", "operator"}}, 24*time.Hour)
	if err != nil {
		return fmt.Errorf("mint dev token: %w", err)
	}
	if err := seedDev(ctx, *grpcAddr, token); err != nil {
		return err
	}
	printQuickStart(stdout, *grpcAddr, token)
	return <-errc
}

// devSecret returns AUTH_HS256_SECRET when set, else the secret kept in path, made on first use.
func devSecret(path string, lookup func(string) (string, bool)) (string, error) {
	if s, ok := lookup("AUTH_HS256_SECRET"); ok && s != "" {
		return s, nil
	}
	if b, err := os.ReadFile(path); err == nil && len(strings.TrimSpace(string(b))) >= 32 {
		return strings.TrimSpace(string(b)), nil
	}
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("make dev secret: %w", err)
	}
	s := hex.EncodeToString(b[:])
	if err := os.WriteFile(path, []byte(s+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("keep dev secret: %w", err)
	}
	return s, nil
}

// startNATS runs an embedded JetStream server on a loopback port of its own.
func startNATS(storeDir string) (*natsserver.Server, error) {
	ns, err := natsserver.NewServer(&natsserver.Options{
		Host:      "127.0.0.1",
		Port:      natsserver.RANDOM_PORT,
		JetStream: true,
		StoreDir:  storeDir,
		NoSigs:    true,
		NoLog:     true,
	})
	if err != nil {
		return nil, fmt.Errorf("embedded NATS: %w", err)
	}
	ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		ns.Shutdown()
		return nil, errors.New("embedded NATS did not become ready within 10s")
	}
	return ns, nil
}

// startRedis runs a redis-server with its data (AOF) in dir on a free loopback port.
func startRedis(ctx context.Context, dir string, stderr io.Writer) (string, func(), error) {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		return "", nil, errors.New("Redis is needed: set REDIS_URL to a running Redis, or install redis-server " +
			"(Debian/Ubuntu: sudo apt-get install redis-server; macOS: brew install redis)")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", nil, fmt.Errorf("create redis data directory: %w", err)
	}
	port, err := freePort()
	if err != nil {
		return "", nil, err
	}
	cmd := exec.Command(bin, "--bind", "127.0.0.1", "--port", strconv.Itoa(port), "--dir", dir,
		"--appendonly", "yes", "--save", "", "--protected-mode", "yes", "--logfile", filepath.Join(dir, "redis.log"))
	cmd.Stdout, cmd.Stderr = stderr, stderr
	if err := cmd.Start(); err != nil {
		return "", nil, fmt.Errorf("start redis-server: %w", err)
	}
	stop := func() {
		_ = cmd.Process.Signal(os.Interrupt)
		_ = cmd.Wait()
	}
	url := fmt.Sprintf("redis://127.0.0.1:%d/0", port)
	c := redis.NewClient(&redis.Options{Addr: fmt.Sprintf("127.0.0.1:%d", port)})
	defer c.Close()
	deadline := time.Now().Add(15 * time.Second)
	for {
		if err := c.Ping(ctx).Err(); err == nil {
			return url, stop, nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			stop()
			return "", nil, fmt.Errorf("redis-server did not answer on port %d; see %s", port, filepath.Join(dir, "redis.log"))
		}
		select {
		case <-ctx.Done():
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// seedDev creates the development tenant and its admin user through the API, so the quick start
// has a tenant to act in; both already existing (a restart) is fine.
func seedDev(ctx context.Context, addr, token string) error {
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return fmt.Errorf("dial %s: %w", addr, err)
	}
	defer conn.Close()
	c := mailboxv1.NewMailboxServiceClient(conn)
	ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
	_, err = c.CreateTenant(ctx, &mailboxv1.CreateTenantRequest{Tenant: &mailboxv1.Tenant{TenantId: devTenant, DisplayName: "Development"}})
	if status.Code(err) != codes.OK && status.Code(err) != codes.AlreadyExists {
		return fmt.Errorf("create the %s tenant: %w", devTenant, err)
	}
	_, err = c.CreateUser(ctx, &mailboxv1.CreateUserRequest{User: &mailboxv1.User{
		UserId: "dev-admin", DisplayName: "Development Admin", Email: "dev-admin@postamt.localhost", Roles: []string{"admin"},
	}})
	if status.Code(err) != codes.OK && status.Code(err) != codes.AlreadyExists {
		return fmt.Errorf("create the dev-admin user: %w", err)
	}
	return nil
}

func printQuickStart(w io.Writer, addr, token string) {
	fmt.Fprintf(w, `
Postamt is up. Mailbox API: %[1]s (gRPC, plaintext). Stop with Ctrl-C.

  export TOKEN=%[2]s

  bin/grpcurl -plaintext %[1]s list
  bin/grpcurl -plaintext -H "authorization: Bearer $TOKEN" -d '{"user":{"user_id":"martina","display_name":"Martina Musterfrau","email":"m.musterfrau@kanzlei.example"}}' %[1]s postamt.mailbox.v1.MailboxService/CreateUser
  bin/grpcurl -plaintext -H "authorization: Bearer $TOKEN" -d '{}' %[1]s postamt.mailbox.v1.MailboxService/GetTenant

The token is for tenant %[3]q with the admin and operator roles, valid for 24h.
`, addr, token, devTenant)
}
