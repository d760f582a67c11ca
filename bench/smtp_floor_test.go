package bench

import (
	"fmt"
	"io"
	"net"
	"net/textproto"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/postamt/postamt/internal/testkit/smtptest"
)

// BenchmarkSMTPFloor is the floor under P1 on this machine: the SMTP conversation alone, with
// nothing of Postamt in it. POSTAMT_BENCH_POOL (32) connections send POSTAMT_BENCH_P1_N (20,000)
// messages of P1's size to the same smtptest sink P1 uses, with the least a client can do: a
// raw textproto conversation, no queue, no Redis, no events. "pipelined" writes MAIL, RCPT
// and DATA at once (RFC 2920), "stepwise" waits for each reply. Whatever P1 reaches on this
// machine, it cannot pass this figure, since P1 runs the same conversation and everything else
// beside it on the same two vCPUs.
func BenchmarkSMTPFloor(b *testing.B) {
	body := strings.Repeat("Sehr geehrte Damen und Herren, anbei die Unterlagen zu Ihrer Akte.\r\n", 8)
	msg := "From: info@kanzlei.example\r\nTo: mandant1@example.com\r\nSubject: Ihre Akte\r\nMessage-ID: <x@kanzlei.example>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n" + body
	for _, pipelined := range []bool{true, false} {
		name := map[bool]string{true: "pipelined", false: "stepwise"}[pipelined]
		b.Run(name, func(b *testing.B) {
			sink := smtptest.Start(b)
			n, conns := envInt("POSTAMT_BENCH_P1_N", 20_000), envInt("POSTAMT_BENCH_POOL", 32)
			b.ResetTimer()
			for round := range b.N {
				cpu0 := processCPU()
				start := time.Now()
				var next atomic.Int64
				var wg sync.WaitGroup
				for range conns {
					wg.Go(func() {
						c, err := floorDial(sink.Addr())
						if err != nil {
							b.Error(err)
							return
						}
						defer c.Close()
						for next.Add(1) <= int64(n) {
							if err := floorSend(c, msg, pipelined); err != nil {
								b.Error(err)
								return
							}
						}
					})
				}
				wg.Wait()
				msgs := sink.WaitForMessages(b, (round+1)*n, time.Minute)
				last := msgs[len(msgs)-1].Received
				b.ReportMetric(float64(n)/last.Sub(start).Seconds(), "emails/s")
				b.ReportMetric(float64((processCPU()-cpu0).Microseconds())/float64(n), "proc-cpu-µs/email")
			}
		})
	}
}

func floorDial(addr string) (*textproto.Conn, error) {
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	c := textproto.NewConn(nc)
	if _, _, err := c.ReadResponse(220); err != nil {
		return nil, err
	}
	if err := c.PrintfLine("EHLO floor.localhost"); err != nil {
		return nil, err
	}
	if _, _, err := c.ReadResponse(250); err != nil {
		return nil, err
	}
	return c, nil
}

func floorSend(c *textproto.Conn, msg string, pipelined bool) error {
	cmds := []string{"MAIL FROM:<info@kanzlei.example>", "RCPT TO:<mandant1@example.com>", "DATA"}
	want := []int{250, 250, 354}
	if pipelined {
		_, _ = fmt.Fprintf(c.W, "%s\r\n%s\r\n%s\r\n", cmds[0], cmds[1], cmds[2])
		if err := c.W.Flush(); err != nil {
			return err
		}
		for _, code := range want {
			if _, _, err := c.ReadResponse(code); err != nil {
				return err
			}
		}
	} else {
		for i, cmd := range cmds {
			if err := c.PrintfLine("%s", cmd); err != nil {
				return err
			}
			if _, _, err := c.ReadResponse(want[i]); err != nil {
				return err
			}
		}
	}
	dw := c.DotWriter()
	if _, err := io.WriteString(dw, msg); err != nil {
		return err
	}
	if err := dw.Close(); err != nil {
		return err
	}
	_, _, err := c.ReadResponse(250)
	return err
}
