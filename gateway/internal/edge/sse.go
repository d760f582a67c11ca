package edge

// SSE writes responses as server-sent events: each message of a server stream (WatchEmails) is one
// `data:` event, for browsers' EventSource. Clients choose it with `Accept: text/event-stream`;
// without it, streams come as newline-delimited JSON (grpc-gateway's default). Its zero value
// reads bodies as strictly as JSON and writes events without unset fields.
type SSE struct {
	JSON
}

// ContentType is the event stream's.
func (SSE) ContentType(any) string { return "text/event-stream" }

// Marshal encodes v as JSON on one line (protojson never breaks lines without Indent) after the
// event's field name.
func (s SSE) Marshal(v any) ([]byte, error) {
	b, err := s.JSONPb.Marshal(v)
	if err != nil {
		return nil, err
	}
	return append([]byte("data: "), b...), nil
}

// Delimiter ends an event.
func (SSE) Delimiter() []byte { return []byte("\n\n") }
