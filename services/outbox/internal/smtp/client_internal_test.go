package smtp

import (
	"bufio"
	"bytes"
	"errors"
	"net/textproto"
	"strings"
	"testing"
)

// TestLineLimitKeepsTheLinesBefore: a reply and an overlong line that arrive in one read are
// the reply, then the error; the whole read once failed, and the relay's answer to a message
// was lost with it (found by FuzzSend).
func TestLineLimitKeepsTheLinesBefore(t *testing.T) {
	for _, tail := range []string{strings.Repeat("x", maxReplyLine+1) + "\r\n", strings.Repeat("x", maxReplyLine+1)} {
		in := "250 2.0.0 Ok: queued\r\n" + tail
		r := textproto.NewReader(bufio.NewReaderSize(&lineLimitReader{r: bytes.NewReader([]byte(in)), limit: maxReplyLine}, 4096))
		code, text, err := r.ReadResponse(2)
		if code != 250 || text != "2.0.0 Ok: queued" || err != nil {
			t.Errorf("first reply = %d %q %v", code, text, err)
		}
		if _, _, err := r.ReadResponse(2); !errors.Is(err, errReplyLineTooLong) {
			t.Errorf("then %v, want errReplyLineTooLong", err)
		}
	}
	// A line of exactly the limit is fine, one octet more is not, across reads too.
	ok := "250 " + strings.Repeat("y", maxReplyLine-5) + "\r\n"
	for _, size := range []int{16, 4096} {
		r := textproto.NewReader(bufio.NewReaderSize(&lineLimitReader{r: bytes.NewReader([]byte(ok + "2" + ok)), limit: maxReplyLine}, size))
		if _, _, err := r.ReadResponse(2); err != nil {
			t.Errorf("a line of %d octets: %v", len(ok)-1, err)
		}
		if _, _, err := r.ReadResponse(2); !errors.Is(err, errReplyLineTooLong) {
			t.Errorf("a line of %d octets: %v, want errReplyLineTooLong", len(ok), err)
		}
	}
}

// TestReplyLinesBounded: a multi-line reply of maxReplyLines lines is read, one more
// continuation line ends the connection's reads, whatever the read sizes (found by FuzzSend: a
// relay could grow one reply without end).
func TestReplyLinesBounded(t *testing.T) {
	reply := func(lines int) string {
		return strings.Repeat("250-SIZE 1000\r\n", lines-1) + "250 OK\r\n"
	}
	for _, size := range []int{16, 4096} {
		read := func(in string) error {
			r := textproto.NewReader(bufio.NewReaderSize(&lineLimitReader{r: bytes.NewReader([]byte(in)), limit: maxReplyLine}, size))
			_, _, err := r.ReadResponse(2)
			return err
		}
		if err := read(reply(maxReplyLines) + reply(maxReplyLines)); err != nil {
			t.Errorf("buffer %d: a reply of %d lines: %v", size, maxReplyLines, err)
		}
		if err := read(reply(maxReplyLines + 1)); !errors.Is(err, errReplyLineTooLong) {
			t.Errorf("buffer %d: a reply of %d lines: %v, want errReplyLineTooLong", size, maxReplyLines+1, err)
		}
		// Replies one after another each start counting anew.
		r := textproto.NewReader(bufio.NewReaderSize(&lineLimitReader{r: bytes.NewReader([]byte(strings.Repeat(reply(maxReplyLines), 3))), limit: maxReplyLine}, size))
		for i := range 3 {
			if _, _, err := r.ReadResponse(2); err != nil {
				t.Errorf("buffer %d: reply %d: %v", size, i, err)
			}
		}
	}
}
