package upstream

import (
	"fmt"
	"net/http"
	"testing"
	"time"
)

type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time { return c.t }

// rt is a distinguishable RoundTripper.
type rt int

func (rt) RoundTrip(*http.Request) (*http.Response, error) { return nil, nil }

func TestTransportCacheExpiry(t *testing.T) {
	clock := &fakeClock{t: time.Unix(1_000_000, 0)}
	c := newTransportCache(4, time.Minute, clock.now)

	c.put("a", rt(1))
	if got, ok := c.get("a"); !ok || got != rt(1) {
		t.Fatalf("get(a) = %v, %v; want rt(1)", got, ok)
	}
	clock.t = clock.t.Add(59 * time.Second)
	if _, ok := c.get("a"); !ok {
		t.Fatal("expired before its TTL")
	}
	clock.t = clock.t.Add(time.Second)
	if _, ok := c.get("a"); ok {
		t.Fatal("still there after its TTL")
	}
	if n := c.size(); n != 0 {
		t.Fatalf("size = %d after expiry, want 0", n)
	}
}

func TestTransportCacheBound(t *testing.T) {
	clock := &fakeClock{t: time.Unix(1_000_000, 0)}
	c := newTransportCache(3, time.Minute, clock.now)
	for i := range 3 {
		c.put(fmt.Sprint(i), rt(i))
		clock.t = clock.t.Add(time.Second)
	}
	c.put("0", rt(10)) // replacing an entry evicts nothing
	if n := c.size(); n != 3 {
		t.Fatalf("size = %d, want 3", n)
	}
	c.put("3", rt(3)) // full: "1" expires soonest now that "0" was refreshed
	if n := c.size(); n != 3 {
		t.Fatalf("size = %d, want the bound 3", n)
	}
	if _, ok := c.get("1"); ok {
		t.Error(`"1" should have been evicted`)
	}
	for _, k := range []string{"0", "2", "3"} {
		if _, ok := c.get(k); !ok {
			t.Errorf("%q was evicted", k)
		}
	}

	// Expired entries go first, however many.
	clock.t = clock.t.Add(2 * time.Minute)
	c.put("4", rt(4))
	if n := c.size(); n != 1 {
		t.Fatalf("size = %d, want 1 after expired entries were dropped", n)
	}
}
