package store

import (
	"errors"
	"fmt"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"log/slog"
	"time"
)

// DefaultPartialMaxAge is how long a partial blob nobody writes to is kept
// before Evict removes it.
const DefaultPartialMaxAge = 24 * time.Hour

// Option configures a Store.
type Option func(*options) error

type options struct {
	quota         int64
	log           *slog.Logger
	partialMaxAge time.Duration
	now           func() time.Time
	onRemove      func(v1.Hash)
}

// WithQuota bounds the bytes the store keeps (complete blobs plus the announced
// size of partial ones). 0, the default, means no quota.
func WithQuota(bytes int64) Option {
	return func(o *options) error {
		if bytes < 0 {
			return fmt.Errorf("quota %d: must be 0 (none) or positive", bytes)
		}
		o.quota = bytes
		return nil
	}
}

// WithOnRemove registers f to be told of every blob the store removes
// (evicted, deleted, discarded), so that others who track what the node holds
// (the cluster) can forget it. f runs with the store locked: it must not block
// nor call the store.
func WithOnRemove(f func(dgst v1.Hash)) Option {
	return func(o *options) error {
		o.onRemove = f
		return nil
	}
}

// WithLogger sets the logger; the default discards.
func WithLogger(log *slog.Logger) Option {
	return func(o *options) error {
		if log == nil {
			return errors.New("logger: must not be nil")
		}
		o.log = log
		return nil
	}
}

// WithPartialMaxAge sets how long a partial blob without an ingestion is kept
// after it was last written or opened before Evict removes it
// (DefaultPartialMaxAge).
func WithPartialMaxAge(d time.Duration) Option {
	return func(o *options) error {
		if d <= 0 {
			return fmt.Errorf("partial max age %s: must be positive", d)
		}
		o.partialMaxAge = d
		return nil
	}
}

// WithClock replaces time.Now, for tests. The times it returns are also the
// modification times written to blob files, so they order eviction after a
// restart.
func WithClock(now func() time.Time) Option {
	return func(o *options) error {
		if now == nil {
			return errors.New("clock: must not be nil")
		}
		o.now = now
		return nil
	}
}
