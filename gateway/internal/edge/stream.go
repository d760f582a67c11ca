package edge

import (
	"context"
	"net/http"
	"slices"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"google.golang.org/protobuf/proto"
)

// WatchOpenHeader is the header metadata a server stream sends once it is in place, before its
// first message (OutboxService.WatchEmails does).
const WatchOpenHeader = "postamt-watch-open"

// openStream starts the HTTP response of a server stream as soon as the service says the stream
// is in place (WatchOpenHeader), instead of at its first message as grpc-gateway does: a client
// of a quiet outbox would otherwise wait without headers, unable to tell a watch in place from
// one still connecting, and a proxy may close a response that sends nothing. Server-sent events
// get a comment line (": open"), which EventSource and event-stream readers skip. A stream that
// fails before it is in place sends no such header, and keeps its HTTP error status.
//
// grpc-gateway calls forward-response options with a nil message once before a stream's first
// message; unary answers and later messages pass through untouched.
func openStream(ctx context.Context, w http.ResponseWriter, m proto.Message) error {
	if m != nil {
		return nil
	}
	md, ok := runtime.ServerMetadataFromContext(ctx)
	if !ok || len(md.HeaderMD.Get(WatchOpenHeader)) == 0 {
		return nil
	}
	w.Header().Del("Grpc-Metadata-" + WatchOpenHeader)
	if exchangeFrom(ctx).eventStream {
		w.Header().Set("Content-Type", "text/event-stream")
		w.Header().Set("Cache-Control", "no-store")
		w.WriteHeader(http.StatusOK)
		if _, err := w.Write([]byte(": open\n\n")); err != nil {
			return err
		}
	} else {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusOK)
	}
	return http.NewResponseController(w).Flush()
}

// acceptsEventStream tells whether grpc-gateway will answer r with server-sent events: it picks
// a marshaler by an Accept value equal to its MIME type.
func acceptsEventStream(r *http.Request) bool {
	return slices.Contains(r.Header.Values("Accept"), "text/event-stream")
}
