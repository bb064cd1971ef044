package upstream

import (
	"net/http"
	"sync"
	"time"
)

const (
	// transportCacheSize bounds how many repositories keep an authenticated
	// transport. A node pulls from few repositories at a time; past the bound
	// the one expiring soonest is dropped and re-created on its next use.
	transportCacheSize = 256
	// transportTTL bounds how long a transport is reused before the registry
	// is pinged again, so that changed credentials (a rotated docker
	// config.json, a re-login) are picked up. Bearer tokens expiring sooner
	// are refreshed by the transport itself when the origin answers 401.
	transportTTL = 10 * time.Minute
)

// transportCache holds one authenticated RoundTripper per repository, for a
// bounded number of repositories and a bounded time.
type transportCache struct {
	limit int
	ttl   time.Duration
	now   func() time.Time

	mu      sync.Mutex
	entries map[string]cachedTransport
}

type cachedTransport struct {
	rt      http.RoundTripper
	expires time.Time
}

func newTransportCache(limit int, ttl time.Duration, now func() time.Time) *transportCache {
	return &transportCache{limit: limit, ttl: ttl, now: now, entries: make(map[string]cachedTransport)}
}

func (c *transportCache) get(key string) (http.RoundTripper, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.entries[key]
	if !ok {
		return nil, false
	}
	if !c.now().Before(e.expires) {
		delete(c.entries, key)
		return nil, false
	}
	return e.rt, true
}

func (c *transportCache) put(key string, rt http.RoundTripper) {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.now()
	if _, ok := c.entries[key]; !ok && len(c.entries) >= c.limit {
		// Scanning is fine at this size and only happens when full.
		oldest := ""
		for k, e := range c.entries {
			if !now.Before(e.expires) {
				delete(c.entries, k)
				continue
			}
			if oldest == "" || e.expires.Before(c.entries[oldest].expires) {
				oldest = k
			}
		}
		if len(c.entries) >= c.limit {
			delete(c.entries, oldest)
		}
	}
	c.entries[key] = cachedTransport{rt: rt, expires: now.Add(c.ttl)}
}

func (c *transportCache) size() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.entries)
}
