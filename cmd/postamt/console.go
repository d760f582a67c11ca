package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	outboxapp "github.com/postamt/postamt/services/outbox/app"
)

// console is what `postamt up` writes its services' JSON log through: every line goes to the
// log file, and the terminal gets one calm line per delivery attempt (outboxapp.AttemptMessage)
// and per ERROR, once the quick start is printed (show). A newcomer sees mail leave, not
// a hundred JSON lines; the file has everything.
type console struct {
	mu   sync.Mutex
	file io.Writer
	term io.Writer
	on   atomic.Bool
}

// show starts the terminal lines.
func (c *console) show() { c.on.Store(true) }

// Write takes the JSON lines of slog handlers (each Write is whole lines).
func (c *console) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	n, err := c.file.Write(p)
	if err != nil || !c.on.Load() {
		return n, err
	}
	for line := range bytes.Lines(p) {
		if s := calmLine(line); s != "" {
			_, _ = io.WriteString(c.term, s) // the terminal is a courtesy; the file is the log
		}
	}
	return n, nil
}

// printf writes a line of postamt up's own to the terminal.
func (c *console) printf(format string, args ...any) {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, _ = fmt.Fprintf(c.term, time.Now().Format("15:04:05")+"  "+format+"\n", args...)
}

// logLine is the part of a JSON log line the terminal shows.
type logLine struct {
	Time         time.Time `json:"time"`
	Level        string    `json:"level"`
	Msg          string    `json:"msg"`
	Service      string    `json:"service"`
	Error        string    `json:"error"`
	Email        string    `json:"email"`
	Connector    string    `json:"connector"`
	Outcome      string    `json:"outcome"`
	Status       string    `json:"status"`
	Attempt      int       `json:"attempt"`
	SMTPCode     int       `json:"smtp_code"`
	SMTPEnhanced string    `json:"smtp_enhanced"`
	SMTPReply    string    `json:"smtp_reply"`
	NextAttempt  time.Time `json:"next_attempt"`
	DurationMS   float64   `json:"duration_ms"`
}

// calmLine renders a delivery attempt or an error for the terminal, or "" for any other line.
func calmLine(raw []byte) string {
	attempt := bytes.Contains(raw, []byte(`"msg":"`+outboxapp.AttemptMessage+`"`))
	if !attempt && !bytes.Contains(raw, []byte(`"level":"ERROR"`)) {
		return ""
	}
	var l logLine
	if err := json.Unmarshal(raw, &l); err != nil {
		return ""
	}
	at := l.Time.Local().Format("15:04:05")
	if !attempt && l.Service == "up" {
		return "" // up says its own errors on the terminal (terminal.printf)
	}
	if !attempt {
		s := fmt.Sprintf("%s  error      %s: %s", at, l.Service, l.Msg)
		if l.Error != "" {
			s += ": " + l.Error
		}
		return s + "\n"
	}
	what := "sent"
	switch {
	case l.Status == "FAILED":
		what = "FAILED"
	case l.Status == "PENDING_RETRY":
		what = "retry"
	case l.Outcome != "sent":
		what = strings.ToLower(l.Status)
	}
	reply := strings.TrimSpace(strings.Join(strings.Fields(fmt.Sprintf("%s %s %s", nonZero(l.SMTPCode), l.SMTPEnhanced, l.SMTPReply)), " "))
	s := fmt.Sprintf("%s  %-9s  email %s via %s", at, what, l.Email, l.Connector)
	if l.Attempt > 1 {
		s += fmt.Sprintf(" (attempt %d)", l.Attempt)
	}
	if reply != "" {
		s += ": " + reply
	}
	if !l.NextAttempt.IsZero() {
		s += "; next attempt " + l.NextAttempt.Local().Format("15:04:05")
	}
	return s + fmt.Sprintf(" [%s ms]\n", trimFloat(l.DurationMS))
}

func nonZero(n int) string {
	if n == 0 {
		return ""
	}
	return fmt.Sprint(n)
}

func trimFloat(ms float64) string {
	return strings.TrimRight(strings.TrimRight(fmt.Sprintf("%.1f", ms), "0"), ".")
}
