package redisx_test

import (
	"context"
	"errors"
	"sync"
	"testing"

	"github.com/postamt/postamt/internal/errs"
	"github.com/postamt/postamt/internal/redisx"
	"github.com/postamt/postamt/internal/testkit/redistest"
)

type counter struct {
	N int `json:"n"`
}

// TestUpdateJSON: concurrent read-modify-writes of one value lose no update, and a refusing
// mutate writes nothing. An update may give up with ABORTED under contention (its documented
// answer, which callers retry); the writers here retry it as a caller would, so the test holds
// on a machine busy enough to make one writer lose 16 races in a row.
func TestUpdateJSON(t *testing.T) {
	rdb := redistest.Start(t).Client(t)
	ctx := context.Background()
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for done := 0; done < 25; {
				_, err := redisx.UpdateJSON(ctx, rdb, "c", func(c *counter) error { c.N++; return nil })
				switch {
				case err == nil:
					done++
				case !errors.Is(err, errs.ErrAborted):
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	var got counter
	if _, found, err := redisx.GetJSON(ctx, rdb, "c", &got); err != nil || !found || got.N != 100 {
		t.Fatalf("after 100 increments: %+v, found %v, %v", got, found, err)
	}
	refuse := errors.New("no")
	if _, err := redisx.UpdateJSON(ctx, rdb, "c", func(c *counter) error { c.N = 0; return refuse }); !errors.Is(err, refuse) {
		t.Fatalf("refusing mutate: %v", err)
	}
	if _, _, err := redisx.GetJSON(ctx, rdb, "c", &got); err != nil || got.N != 100 {
		t.Errorf("a refused update wrote %+v (%v)", got, err)
	}
	if _, found, err := redisx.GetJSON(ctx, rdb, "missing", &got); found || err != nil {
		t.Errorf("missing key: found %v, %v", found, err)
	}
}
