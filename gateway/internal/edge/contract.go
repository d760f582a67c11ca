package edge

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"google.golang.org/genproto/googleapis/api/annotations"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	"github.com/postamt/postamt/internal/auth"
	"github.com/postamt/postamt/internal/errs"
)

// Me is what an HTTP caller may write for a user id in a path (GET
// /v1/outbox/users/me/settings): the gateway puts the caller's own user id in its place (empty for
// a service caller, which the services read as "the caller" where the proto says so). A user whose
// id is "me" is reachable over gRPC only.
const Me = "me"

// exchange is what the edge knows of one HTTP request while grpc-gateway handles it: the caller,
// the route, whether the body hit its bound, and the error status written (for the log line).
type exchange struct {
	caller       auth.Principal
	maxBody      int64
	route        route
	bodyTooLarge bool
	failed       *status.Status
	// eventStream: the answer is server-sent events (Accept: text/event-stream; see openStream).
	eventStream bool
	probe       *probe
}

// probe marks a request the edge makes of the mux to learn whether a method routes (allowed).
type probe struct{ matched bool }

func (x *exchange) probing() bool { return x.probe != nil }

func (x *exchange) tooLarge() error {
	return errs.ResourceExhausted("BODY_TOO_LARGE", "the request body is larger than "+strconv.FormatInt(x.maxBody, 10)+" bytes", 0)
}

type exchangeKey struct{}

func withExchange(ctx context.Context, x *exchange) context.Context {
	return context.WithValue(ctx, exchangeKey{}, x)
}

// exchangeFrom returns the request's exchange; a request that did not come through the edge gets
// a throwaway one.
func exchangeFrom(ctx context.Context) *exchange {
	if x, ok := ctx.Value(exchangeKey{}).(*exchange); ok {
		return x
	}
	return &exchange{}
}

// boundedBody notes in the exchange that the body hit its bound, so that the error is 413
// BODY_TOO_LARGE and not the InvalidArgument grpc-gateway makes of every decoding error.
type boundedBody struct {
	io.ReadCloser
	x *exchange
}

func (b boundedBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if mbe := (*http.MaxBytesError)(nil); errors.As(err, &mbe) {
		b.x.bodyTooLarge = true
	}
	return n, err // unwrapped: readers return io.EOF itself
}

// route is what the proto's HTTP rule says about one route.
type route struct {
	// input is the request message.
	input protoreflect.MessageDescriptor
	// body is the rule's body: "" (none), "*" (the whole request) or a field of it.
	body string
}

// routes maps "METHOD pattern" (grpc-gateway's Pattern.String form) to the route.
type routes map[string]route

// captureRE matches a simple variable of a path template, which Pattern.String writes as {x=*}.
var captureRE = regexp.MustCompile(`\{([^}=]+)\}`)

// newRoutes reads the HTTP rules of the named services from the registered descriptors.
func newRoutes(services []string) (routes, error) {
	out := routes{}
	for _, name := range services {
		d, err := protoregistry.GlobalFiles.FindDescriptorByName(protoreflect.FullName(name))
		if err != nil {
			return nil, fmt.Errorf("gateway: service %s: %w", name, err)
		}
		sd, ok := d.(protoreflect.ServiceDescriptor)
		if !ok {
			return nil, fmt.Errorf("gateway: %s is not a service", name)
		}
		for i := range sd.Methods().Len() {
			md := sd.Methods().Get(i)
			rule, _ := proto.GetExtension(md.Options(), annotations.E_Http).(*annotations.HttpRule)
			if rule == nil {
				continue
			}
			for _, r := range append([]*annotations.HttpRule{rule}, rule.GetAdditionalBindings()...) {
				method, tmpl := ruleMethod(r)
				if method == "" {
					continue
				}
				out[method+" "+captureRE.ReplaceAllString(tmpl, "{$1=*}")] = route{input: md.Input(), body: r.GetBody()}
			}
		}
	}
	return out, nil
}

func ruleMethod(r *annotations.HttpRule) (method, template string) {
	switch p := r.GetPattern().(type) {
	case *annotations.HttpRule_Get:
		return http.MethodGet, p.Get
	case *annotations.HttpRule_Post:
		return http.MethodPost, p.Post
	case *annotations.HttpRule_Put:
		return http.MethodPut, p.Put
	case *annotations.HttpRule_Patch:
		return http.MethodPatch, p.Patch
	case *annotations.HttpRule_Delete:
		return http.MethodDelete, p.Delete
	case *annotations.HttpRule_Custom:
		return p.Custom.GetKind(), p.Custom.GetPath()
	}
	return "", ""
}

// contract is the HTTP side's part of the API contract that grpc-gateway leaves lenient, applied
// to every route once the mux has matched it and before the generated handler reads it.
type contract struct {
	routes routes
	mux    *runtime.ServeMux
}

// middleware checks the path and the query of a matched route: text is valid UTF-8 (else the
// call fails in the client's proto encoding, a 500), every query parameter is a field of the
// request outside the path and the body (grpc-gateway ignores others silently, so `?veiw=` would
// list the default view), each value parses as its field's type (checkQueryValues: ?pageSize=abc
// is a violation of page_size, not a parser's error message), no field is set twice; and it puts
// the caller's id in place of "me". A probe (allowed) stops here.
func (c *contract) middleware(next runtime.HandlerFunc) runtime.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request, params map[string]string) {
		x := exchangeFrom(r.Context())
		if x.probing() {
			x.probe.matched = true
			return
		}
		rt, known := route{}, false
		if pat, ok := runtime.HTTPPattern(r.Context()); ok {
			rt, known = c.routes[r.Method+" "+pat.String()]
		}
		x.route = rt
		x.eventStream = acceptsEventStream(r)
		var v errs.Violations
		names := make([]string, 0, len(params))
		for name := range params {
			names = append(names, name)
		}
		slices.Sort(names)
		for _, name := range names {
			if !utf8.ValidString(params[name]) {
				v.Add(name, "is not valid UTF-8")
			}
		}
		c.checkQuery(r, rt, known, params, &v)
		if err := v.Err(); err != nil {
			_, out := runtime.MarshalerForRequest(c.mux, r)
			errorHandler(r.Context(), c.mux, out, w, r, errs.ToStatus(err).Err())
			return
		}
		for _, name := range names {
			if params[name] == Me && isUserID(name) {
				params[name] = x.caller.User
			}
		}
		next(w, r, params)
	}
}

// isUserID tells whether a path variable names a user: user_id, settings.user_id, owner_user_id.
func isUserID(name string) bool {
	leaf := name[strings.LastIndex(name, ".")+1:]
	return leaf == "user_id" || strings.HasSuffix(leaf, "_user_id")
}

// mapKeyRE matches grpc-gateway's query form of a map entry, field[key]=value.
var mapKeyRE = regexp.MustCompile(`^(.*)\[(.*)\]$`)

func (c *contract) checkQuery(r *http.Request, rt route, known bool, params map[string]string, v *errs.Violations) {
	query, _ := url.ParseQuery(r.URL.RawQuery) // a malformed escape fails in the handler's ParseForm, as 400
	keys := make([]string, 0, len(query))
	for k := range query {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	seen := map[string]string{} // the key that set each field
	for _, key := range keys {
		if !utf8.ValidString(key) {
			v.Add(strings.ToValidUTF8(key, "\uFFFD"), "is not valid UTF-8")
			continue
		}
		if slices.ContainsFunc(query[key], func(s string) bool { return !utf8.ValidString(s) }) {
			v.Add(key, "is not valid UTF-8")
			continue
		}
		if !known {
			continue
		}
		if rt.body == "*" {
			v.Add(key, "is not a query parameter of this method: it takes its input in the JSON body")
			continue
		}
		field, mapKey, set := key, false, ""
		if m := mapKeyRE.FindStringSubmatch(key); m != nil {
			field, mapKey, set = m[1], true, "["+m[2]+"]"
		}
		path, fd := resolve(rt.input, field)
		set = path + set // what the key sets: the field, or one entry of a map
		switch {
		case fd == nil || mapKey != fd.IsMap():
			v.Add(key, "is not a query parameter of this method")
		case rt.body != "" && (path == rt.body || strings.HasPrefix(path, rt.body+".")):
			v.Add(key, "is part of the JSON body of this method")
		case inPath(params, path):
			v.Add(key, "is given in the path")
		case seen[set] != "":
			// grpc-gateway refuses a field set twice, under its proto and its JSON name
			v.Addf(set, "given twice, as %s and %s", seen[set], key)
		default:
			seen[set] = key
			checkQueryValues(rt.input, key, path, fd, query[key], v)
		}
	}
}

func inPath(params map[string]string, path string) bool {
	_, ok := params[path]
	return ok
}

// resolve finds the field a query key names, by proto or JSON names joined with dots through
// singular messages; it returns the proto path and the field, or a nil field.
func resolve(md protoreflect.MessageDescriptor, key string) (string, protoreflect.FieldDescriptor) {
	var (
		path []string
		fd   protoreflect.FieldDescriptor
	)
	for i, name := range strings.Split(key, ".") {
		if i > 0 {
			if fd.Message() == nil || fd.IsList() || fd.IsMap() {
				return "", nil
			}
			md = fd.Message()
		}
		fd = md.Fields().ByTextName(name)
		if fd == nil {
			fd = md.Fields().ByJSONName(name)
		}
		if fd == nil {
			return "", nil
		}
		path = append(path, string(fd.Name()))
	}
	return strings.Join(path, "."), fd
}

// NewMux returns the grpc-gateway mux of the HTTP side with the suite's contract: the strict JSON
// marshaler (also under server-sent events), the checks of the middleware, one error handler for
// every error (HTTPStatus, Retry-After, field violations) and 405 with Allow for a wrong method.
// services are the full names of the services whose routes will be registered; opts come after
// the contract's.
func NewMux(services []string, opts ...runtime.ServeMuxOption) (*runtime.ServeMux, error) {
	rs, err := newRoutes(services)
	if err != nil {
		return nil, err
	}
	c := &contract{routes: rs}
	c.mux = runtime.NewServeMux(append([]runtime.ServeMuxOption{
		runtime.WithMarshalerOption(runtime.MIMEWildcard, &runtime.HTTPBodyMarshaler{Marshaler: NewJSON()}),
		runtime.WithMarshalerOption("text/event-stream", &SSE{}),
		runtime.WithErrorHandler(errorHandler),
		runtime.WithRoutingErrorHandler(routingErrorHandler),
		runtime.WithMiddlewares(c.middleware),
		runtime.WithForwardResponseOption(openStream),
	}, opts...)...)
	return c.mux, nil
}
