package harness

import (
	"strings"

	"github.com/postamt/postamt/internal/testkit/logtest"
)

// harnessMarker begins the line the harness writes into a process's log at each start.
const harnessMarker = "==== harness: "

// noteMalformedLine notes a log line that a log parser would get wrong (logtest.CheckLine): not
// one JSON object (a library's own text, a stray print), or an object with a key twice (which
// parsers resolve silently to one of the values). ScanLogs calls it for every line; a line it
// reports as a stack trace already, and the harness's own marker of each start (Process.start),
// are not reported.
func noteMalformedLine(line string, note func(kind, line string)) {
	line = strings.TrimSpace(line)
	if line == "" || stackRE.MatchString(line) || strings.HasPrefix(line, harnessMarker) {
		return
	}
	if err := logtest.CheckLine([]byte(line)); err != nil {
		if strings.Contains(err.Error(), "twice") {
			note("a JSON line with a duplicate key", line)
		} else {
			note("a line that is not one JSON object", line)
		}
	}
}
