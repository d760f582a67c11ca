package auth_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/reflection"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/postamt/postamt/internal/auth"
)

const (
	testSecret = "a-development-secret-of-32-bytes!"
	testIssuer = "https://idp.example"
)

// keys are the signing material of one test: an HS256 secret, an RSA and an Ed25519 key whose
// public halves are in a JWKS file.
type keys struct {
	cfg        auth.Config // verifies all three
	hs, rs, ed *auth.Signer
	rsaKey     *rsa.PrivateKey
	edKey      ed25519.PrivateKey
}

func newKeys(t *testing.T) *keys {
	t.Helper()
	dir := t.TempDir()
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	_, edKey, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	k := &keys{rsaKey: rsaKey, edKey: edKey}
	k.rs = newSigner(t, auth.Config{Issuer: testIssuer, SigningKeyFile: writePEM(t, dir, "rsa.pem", rsaKey), SigningKeyID: "rsa-1"})
	k.ed = newSigner(t, auth.Config{Issuer: testIssuer, SigningKeyFile: writePEM(t, dir, "ed.pem", edKey)})
	k.hs = newSigner(t, auth.Config{Issuer: testIssuer, HS256Secret: testSecret})
	jwks, err := auth.MarshalJWKS(k.rs, k.ed)
	if err != nil {
		t.Fatal(err)
	}
	jwksFile := filepath.Join(dir, "jwks.json")
	if err := os.WriteFile(jwksFile, jwks, 0o600); err != nil {
		t.Fatal(err)
	}
	k.cfg = auth.Config{HS256Secret: testSecret, JWKSFile: jwksFile, Audience: "postamt", Issuer: testIssuer, Leeway: 30 * time.Second}
	return k
}

func newSigner(t *testing.T, cfg auth.Config) *auth.Signer {
	t.Helper()
	s, err := auth.NewSigner(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func writePEM(t *testing.T, dir, name string, key any) string {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// whoami is what the test service answers: the principal it saw and the authorization header.
type whoami struct {
	Principal     auth.Principal
	Authenticated bool
	Authorization string
}

func answer(ctx context.Context) (*wrapperspb.StringValue, error) {
	var w whoami
	w.Principal, w.Authenticated = auth.FromContext(ctx)
	if md, ok := metadata.FromIncomingContext(ctx); ok && len(md.Get("authorization")) > 0 {
		w.Authorization = md.Get("authorization")[0]
	}
	b, err := json.Marshal(w)
	if err != nil {
		return nil, err
	}
	return wrapperspb.String(string(b)), nil
}

// whoamiDesc is a hand-made service with a unary and a server-streaming method that answer
// with the principal they see.
var whoamiDesc = grpc.ServiceDesc{
	ServiceName: "postamt.test.v1.WhoAmIService",
	HandlerType: (*any)(nil),
	Methods: []grpc.MethodDesc{{
		MethodName: "Get",
		Handler: func(_ any, ctx context.Context, dec func(any) error, ic grpc.UnaryServerInterceptor) (any, error) {
			in := new(wrapperspb.StringValue)
			if err := dec(in); err != nil {
				return nil, err
			}
			h := func(ctx context.Context, _ any) (any, error) { return answer(ctx) }
			if ic == nil {
				return h(ctx, in)
			}
			return ic(ctx, in, &grpc.UnaryServerInfo{FullMethod: "/postamt.test.v1.WhoAmIService/Get"}, h)
		},
	}},
	Streams: []grpc.StreamDesc{{
		StreamName:    "Watch",
		ServerStreams: true,
		Handler: func(_ any, ss grpc.ServerStream) error {
			in := new(wrapperspb.StringValue)
			if err := ss.RecvMsg(in); err != nil {
				return err
			}
			out, err := answer(ss.Context())
			if err != nil {
				return err
			}
			return ss.SendMsg(out)
		},
	}},
}

// serve starts a gRPC server with the auth interceptors of v, health, reflection and the whoami
// service, and returns a connection to it made with opts.
func serve(t *testing.T, v *auth.Verifier, opts ...grpc.DialOption) *grpc.ClientConn {
	t.Helper()
	srv := grpc.NewServer(
		grpc.ChainUnaryInterceptor(auth.UnaryServerInterceptor(v)),
		grpc.ChainStreamInterceptor(auth.StreamServerInterceptor(v)),
	)
	healthpb.RegisterHealthServer(srv, health.NewServer())
	reflection.Register(srv)
	srv.RegisterService(&whoamiDesc, struct{}{})
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	conn, err := grpc.NewClient(lis.Addr().String(), append([]grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

func callUnary(ctx context.Context, conn *grpc.ClientConn) (whoami, error) {
	out := new(wrapperspb.StringValue)
	if err := conn.Invoke(ctx, "/postamt.test.v1.WhoAmIService/Get", wrapperspb.String(""), out); err != nil {
		return whoami{}, err
	}
	var w whoami
	err := json.Unmarshal([]byte(out.GetValue()), &w)
	return w, err
}

func callStream(ctx context.Context, conn *grpc.ClientConn) (whoami, error) {
	s, err := conn.NewStream(ctx, &whoamiDesc.Streams[0], "/postamt.test.v1.WhoAmIService/Watch")
	if err != nil {
		return whoami{}, err
	}
	if err := s.SendMsg(wrapperspb.String("")); err != nil {
		return whoami{}, err
	}
	if err := s.CloseSend(); err != nil {
		return whoami{}, err
	}
	out := new(wrapperspb.StringValue)
	if err := s.RecvMsg(out); err != nil {
		return whoami{}, err
	}
	var w whoami
	err = json.Unmarshal([]byte(out.GetValue()), &w)
	return w, err
}

func withToken(tok string) context.Context {
	return metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+tok)
}

// sign makes a token with the jwt library directly, for claims no Signer would write.
func sign(t *testing.T, method jwt.SigningMethod, key any, kid string, c jwt.MapClaims) string {
	t.Helper()
	tok := jwt.NewWithClaims(method, c)
	if kid != "" {
		tok.Header["kid"] = kid
	}
	s, err := tok.SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// userClaims are valid claims of user u1 in tenant t1; cases edit a copy.
func userClaims(edit func(jwt.MapClaims)) jwt.MapClaims {
	now := time.Now()
	c := jwt.MapClaims{
		"sub": "u1", "tid": "t1", "aud": "postamt", "iss": testIssuer,
		"iat": now.Unix(), "nbf": now.Unix(), "exp": now.Add(time.Hour).Unix(),
	}
	if edit != nil {
		edit(c)
	}
	return c
}

func TestInterceptors(t *testing.T) {
	k := newKeys(t)
	v, err := auth.NewVerifier(k.cfg)
	if err != nil {
		t.Fatal(err)
	}
	conn := serve(t, v)
	user := auth.Principal{Tenant: "t1", User: "u1", Teams: []string{"team-a"}, Roles: []string{"admin"}}
	mint := func(s *auth.Signer, p auth.Principal) string {
		tok, err := s.Mint(p, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	tamper := func(tok string) string {
		// Keep the header and signature, swap in the payload of another tenant's token.
		parts := strings.Split(tok, ".")
		other := strings.Split(mint(k.rs, auth.Principal{Tenant: "t2", User: "u1"}), ".")
		return parts[0] + "." + other[1] + "." + parts[2]
	}
	none := func(c jwt.MapClaims) string {
		s, err := jwt.NewWithClaims(jwt.SigningMethodNone, c).SignedString(jwt.UnsafeAllowNoneSignatureType)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	tests := []struct {
		name     string
		ctx      context.Context
		wantCode codes.Code
		want     auth.Principal
	}{
		{name: "HS256", ctx: withToken(mint(k.hs, user)), want: user},
		{name: "RS256 from JWKS", ctx: withToken(mint(k.rs, user)), want: user},
		{name: "EdDSA from JWKS", ctx: withToken(mint(k.ed, user)), want: user},
		{name: "RS256 without kid, one RSA key", ctx: withToken(sign(t, jwt.SigningMethodRS256, k.rsaKey, "", userClaims(nil))), want: auth.Principal{Tenant: "t1", User: "u1"}},
		{name: "service token", ctx: withToken(mint(k.ed, auth.Principal{Tenant: "t1", Service: "outbox"})), want: auth.Principal{Tenant: "t1", Service: "outbox"}},
		{name: "lowercase bearer", ctx: metadata.AppendToOutgoingContext(context.Background(), "authorization", "bearer "+mint(k.hs, user)), want: user},

		{name: "no token", ctx: context.Background(), wantCode: codes.Unauthenticated},
		{name: "not bearer", ctx: metadata.AppendToOutgoingContext(context.Background(), "authorization", "Basic dTpw"), wantCode: codes.Unauthenticated},
		{name: "garbage", ctx: withToken("not.a.token"), wantCode: codes.Unauthenticated},
		{name: "bad HS256 signature", ctx: withToken(sign(t, jwt.SigningMethodHS256, []byte("another-secret-another-secret-123"), "", userClaims(nil))), wantCode: codes.Unauthenticated},
		{name: "tampered RS256 payload", ctx: withToken(tamper(mint(k.rs, user))), wantCode: codes.Unauthenticated},
		{name: "expired", ctx: withToken(sign(t, jwt.SigningMethodHS256, []byte(testSecret), "", userClaims(func(c jwt.MapClaims) {
			c["exp"] = time.Now().Add(-time.Hour).Unix()
		}))), wantCode: codes.Unauthenticated},
		{name: "not yet valid", ctx: withToken(sign(t, jwt.SigningMethodHS256, []byte(testSecret), "", userClaims(func(c jwt.MapClaims) {
			c["nbf"] = time.Now().Add(time.Hour).Unix()
		}))), wantCode: codes.Unauthenticated},
		{name: "no expiry", ctx: withToken(sign(t, jwt.SigningMethodHS256, []byte(testSecret), "", userClaims(func(c jwt.MapClaims) {
			delete(c, "exp")
		}))), wantCode: codes.Unauthenticated},
		{name: "alg none", ctx: withToken(none(userClaims(nil))), wantCode: codes.Unauthenticated},
		{name: "wrong audience", ctx: withToken(sign(t, jwt.SigningMethodEdDSA, k.edKey, k.ed.KeyID(), userClaims(func(c jwt.MapClaims) {
			c["aud"] = "someone-else"
		}))), wantCode: codes.Unauthenticated},
		{name: "tenant with a path", ctx: withToken(sign(t, jwt.SigningMethodHS256, []byte(testSecret), "", userClaims(func(c jwt.MapClaims) {
			c["tid"] = "../x"
		}))), wantCode: codes.Unauthenticated},
		{name: "tenant with CR LF", ctx: withToken(sign(t, jwt.SigningMethodHS256, []byte(testSecret), "", userClaims(func(c jwt.MapClaims) {
			c["tid"] = "t1\r\n"
		}))), wantCode: codes.Unauthenticated},
		{name: "tenant too long", ctx: withToken(sign(t, jwt.SigningMethodHS256, []byte(testSecret), "", userClaims(func(c jwt.MapClaims) {
			c["tid"] = strings.Repeat("t", 65)
		}))), wantCode: codes.Unauthenticated},
		{name: "empty tenant", ctx: withToken(sign(t, jwt.SigningMethodHS256, []byte(testSecret), "", userClaims(func(c jwt.MapClaims) {
			c["tid"] = ""
		}))), wantCode: codes.Unauthenticated},
		{name: "wrong issuer", ctx: withToken(sign(t, jwt.SigningMethodEdDSA, k.edKey, k.ed.KeyID(), userClaims(func(c jwt.MapClaims) {
			c["iss"] = "https://evil.example"
		}))), wantCode: codes.Unauthenticated},
		{name: "missing tenant", ctx: withToken(sign(t, jwt.SigningMethodRS256, k.rsaKey, "rsa-1", userClaims(func(c jwt.MapClaims) {
			delete(c, "tid")
		}))), wantCode: codes.Unauthenticated},
		{name: "missing user and service", ctx: withToken(sign(t, jwt.SigningMethodRS256, k.rsaKey, "rsa-1", userClaims(func(c jwt.MapClaims) {
			delete(c, "sub")
		}))), wantCode: codes.Unauthenticated},
		{name: "unknown kid", ctx: withToken(sign(t, jwt.SigningMethodRS256, k.rsaKey, "rsa-2", userClaims(nil))), wantCode: codes.Unauthenticated},
		{name: "kid of a key of another algorithm", ctx: withToken(sign(t, jwt.SigningMethodRS256, k.rsaKey, k.ed.KeyID(), userClaims(nil))), wantCode: codes.Unauthenticated},
		{name: "HS256 signed with the RSA public key", ctx: withToken(sign(t, jwt.SigningMethodHS256, x509.MarshalPKCS1PublicKey(&k.rsaKey.PublicKey), "rsa-1", userClaims(nil))), wantCode: codes.Unauthenticated},
	}
	for _, tt := range tests {
		for _, call := range []struct {
			name string
			do   func(context.Context, *grpc.ClientConn) (whoami, error)
		}{{"unary", callUnary}, {"stream", callStream}} {
			t.Run(tt.name+"/"+call.name, func(t *testing.T) {
				got, err := call.do(tt.ctx, conn)
				if gotCode := status.Code(err); gotCode != tt.wantCode {
					t.Fatalf("code = %v, want %v (%v)", gotCode, tt.wantCode, err)
				}
				if err != nil {
					return
				}
				if !got.Authenticated || !reflect.DeepEqual(got.Principal, tt.want) {
					t.Errorf("principal = %+v (authenticated %v), want %+v", got.Principal, got.Authenticated, tt.want)
				}
			})
		}
	}
}

func TestOpenMethodsNeedNoToken(t *testing.T) {
	v, err := auth.NewVerifier(hsConfig(t))
	if err != nil {
		t.Fatal(err)
	}
	conn := serve(t, v)
	ctx := context.Background()

	t.Run("health", func(t *testing.T) {
		resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if got, want := resp.GetStatus(), healthpb.HealthCheckResponse_SERVING; got != want {
			t.Errorf("status = %v, want %v", got, want)
		}
	})
	t.Run("reflection", func(t *testing.T) {
		s, err := reflectionpb.NewServerReflectionClient(conn).ServerReflectionInfo(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{}}); err != nil {
			t.Fatal(err)
		}
		resp, err := s.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if got := len(resp.GetListServicesResponse().GetService()); got == 0 {
			t.Errorf("listed %d services, want some", got)
		}
		_ = s.CloseSend()
	})
}

// hsConfig is the development configuration: one HS256 secret verifies and signs.
func hsConfig(t *testing.T) auth.Config {
	t.Helper()
	return auth.Config{HS256Secret: testSecret, Audience: "postamt"}
}

func TestVerifierAcceptsOnlyConfiguredAlgorithms(t *testing.T) {
	k := newKeys(t)
	hsOnly, err := auth.NewVerifier(auth.Config{HS256Secret: testSecret, Issuer: testIssuer})
	if err != nil {
		t.Fatal(err)
	}
	jwksOnly, err := auth.NewVerifier(auth.Config{JWKSFile: k.cfg.JWKSFile, Issuer: testIssuer})
	if err != nil {
		t.Fatal(err)
	}
	p := auth.Principal{Tenant: "t1", User: "u1"}
	tests := []struct {
		name     string
		verifier *auth.Verifier
		signer   *auth.Signer
		wantOK   bool
	}{
		{name: "HS256 on an HS256 verifier", verifier: hsOnly, signer: k.hs, wantOK: true},
		{name: "RS256 on an HS256 verifier", verifier: hsOnly, signer: k.rs},
		{name: "EdDSA on an HS256 verifier", verifier: hsOnly, signer: k.ed},
		{name: "HS256 on a JWKS verifier", verifier: jwksOnly, signer: k.hs},
		{name: "RS256 on a JWKS verifier", verifier: jwksOnly, signer: k.rs, wantOK: true},
		{name: "EdDSA on a JWKS verifier", verifier: jwksOnly, signer: k.ed, wantOK: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tok, err := tt.signer.Mint(p, time.Minute)
			if err != nil {
				t.Fatal(err)
			}
			got, err := tt.verifier.Verify(tok)
			if gotOK := err == nil; gotOK != tt.wantOK {
				t.Fatalf("Verify error = %v, want ok %v", err, tt.wantOK)
			}
			if err == nil && !reflect.DeepEqual(got, p) {
				t.Errorf("principal = %+v, want %+v", got, p)
			}
		})
	}
}

func TestServiceCredentials(t *testing.T) {
	cfg := hsConfig(t)
	v, err := auth.NewVerifier(cfg)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := auth.NewSigner(cfg)
	if err != nil {
		t.Fatal(err)
	}
	conn := serve(t, v, grpc.WithPerRPCCredentials(auth.ServiceCredentials(signer, "outbox")))
	ctx := context.Background()

	first, err := callUnary(auth.WithTenant(ctx, "t1"), conn)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		ctx      context.Context
		wantCode codes.Code
		want     auth.Principal
		sameAs   string // the Authorization the call must reuse, if any
		otherTo  string // an Authorization the call must not reuse
	}{
		{name: "same tenant reuses the token", ctx: auth.WithTenant(ctx, "t1"), want: auth.Principal{Tenant: "t1", Service: "outbox"}, sameAs: first.Authorization},
		{name: "another tenant gets its own", ctx: auth.WithTenant(ctx, "t2"), want: auth.Principal{Tenant: "t2", Service: "outbox"}, otherTo: first.Authorization},
		{name: "tenant of the request being served", ctx: auth.NewContext(ctx, auth.Principal{Tenant: "t3", User: "u"}), want: auth.Principal{Tenant: "t3", Service: "outbox"}},
		{name: "WithTenant wins over the request", ctx: auth.WithTenant(auth.NewContext(ctx, auth.Principal{Tenant: "t3", User: "u"}), "t4"), want: auth.Principal{Tenant: "t4", Service: "outbox"}},
		{name: "no tenant", ctx: ctx, wantCode: codes.Unauthenticated},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := callUnary(tt.ctx, conn)
			if gotCode := status.Code(err); gotCode != tt.wantCode {
				t.Fatalf("code = %v, want %v (%v)", gotCode, tt.wantCode, err)
			}
			if err != nil {
				return
			}
			if !reflect.DeepEqual(got.Principal, tt.want) || !got.Principal.IsService() {
				t.Errorf("principal = %+v, want %+v", got.Principal, tt.want)
			}
			if tt.sameAs != "" && got.Authorization != tt.sameAs {
				t.Errorf("minted a new token, want the cached one")
			}
			if tt.otherTo != "" && got.Authorization == tt.otherTo {
				t.Errorf("reused another tenant's token")
			}
		})
	}
}

func TestMint(t *testing.T) {
	signer, err := auth.NewSigner(hsConfig(t))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		p       auth.Principal
		ttl     time.Duration
		wantErr bool
	}{
		{name: "user", p: auth.Principal{Tenant: "t", User: "u"}, ttl: time.Minute},
		{name: "service", p: auth.Principal{Tenant: "t", Service: "outbox"}, ttl: time.Minute},
		{name: "no tenant", p: auth.Principal{User: "u"}, ttl: time.Minute, wantErr: true},
		{name: "malformed tenant", p: auth.Principal{Tenant: "../x", User: "u"}, ttl: time.Minute, wantErr: true},
		{name: "nobody", p: auth.Principal{Tenant: "t"}, ttl: time.Minute, wantErr: true},
		{name: "no ttl", p: auth.Principal{Tenant: "t", User: "u"}, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := signer.Mint(tt.p, tt.ttl)
			if gotErr := err != nil; gotErr != tt.wantErr {
				t.Errorf("Mint error = %v, want error %v", err, tt.wantErr)
			}
		})
	}
}

func TestPrincipalRoles(t *testing.T) {
	tests := []struct {
		name                   string
		p                      auth.Principal
		wantAdmin, wantService bool
	}{
		{name: "admin user", p: auth.Principal{Tenant: "t", User: "u", Roles: []string{"operator", "admin"}}, wantAdmin: true},
		{name: "plain user", p: auth.Principal{Tenant: "t", User: "u", Roles: []string{"operator"}}},
		{name: "service", p: auth.Principal{Tenant: "t", Service: "outbox"}, wantService: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.p.IsAdmin(); got != tt.wantAdmin {
				t.Errorf("IsAdmin = %v, want %v", got, tt.wantAdmin)
			}
			if got := tt.p.IsService(); got != tt.wantService {
				t.Errorf("IsService = %v, want %v", got, tt.wantService)
			}
		})
	}
}
