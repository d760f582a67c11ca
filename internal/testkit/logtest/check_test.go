package logtest_test

import (
	"strings"
	"testing"

	"github.com/postamt/postamt/internal/testkit/logtest"
)

func TestCheck(t *testing.T) {
	tests := []struct {
		name, line, want string
	}{
		{name: "a clean line", line: `{"level":"INFO","msg":"rpc","duration_ms":14.5,"g":{"a":1},"l":[{"a":1},{"a":2}]}`},
		{name: "a duplicate key", line: `{"msg":"rpc","service":"mailbox","service":"outbox"}`, want: `key "service" twice`},
		{name: "a duplicate key in a group", line: `{"msg":"x","g":{"a":1,"a":2}}`, want: `key "g.a" twice`},
		{name: "plain text", line: `redis: 2026/12/07 pool.go:770: connection pool: failed to dial`, want: "not JSON"},
		{name: "an array", line: `[1,2]`, want: "not a JSON object"},
		{name: "two objects", line: `{"a":1}{"b":2}`, want: "more than one"},
		{name: "cut off", line: `{"a":1,"b":`, want: "not JSON"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := logtest.Check("\n" + tt.line + "\n")
			if tt.want == "" {
				if len(got) != 0 {
					t.Errorf("Check = %q, want nothing", got)
				}
				return
			}
			if len(got) != 1 || !strings.Contains(got[0], tt.want) || !strings.HasPrefix(got[0], "line 2:") {
				t.Errorf("Check = %q, want one problem on line 2 saying %q", got, tt.want)
			}
		})
	}
}
