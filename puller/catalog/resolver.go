package catalog

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"golang.org/x/sync/singleflight"

	"github.com/thaw-dev/thaw/puller"
)

// ResolverConfig tunes tag resolution.
type ResolverConfig struct {
	// TTL is how long a resolved tag is trusted without asking upstream.
	TTL time.Duration
	// ServeStale answers with the last known digest when the upstream is
	// unavailable (not when it says the tag is gone).
	ServeStale bool
	// Timeout bounds one upstream resolution, so the mirror answers containerd
	// quickly and containerd can fall back to the registry itself.
	Timeout time.Duration
}

// DefaultResolverConfig: tags are trusted for 30 s; stale digests are served
// when the registry is down; an upstream resolution gets 10 s.
func DefaultResolverConfig() ResolverConfig {
	return ResolverConfig{TTL: 30 * time.Second, ServeStale: true, Timeout: 10 * time.Second}
}

// Validate reports a configuration that cannot work.
func (c ResolverConfig) Validate() error {
	if c.TTL < 0 || c.Timeout <= 0 {
		return fmt.Errorf("resolver: ttl must be >= 0 and timeout > 0 (got ttl %s, timeout %s)", c.TTL, c.Timeout)
	}
	return nil
}

// Resolution is the answer to a Resolve: the descriptor and whether it came
// from the cache or from a stale record.
type Resolution struct {
	puller.Descriptor
	Cached bool // answered from the catalog within the TTL
	Stale  bool // the upstream was unavailable; this is the last known digest
}

// Resolver resolves references through a short-TTL cache in front of the
// upstream, recording every answer in the catalog.
type Resolver struct {
	cfg      ResolverConfig
	catalog  *Catalog
	upstream puller.ManifestSource
	log      *slog.Logger
	now      func() time.Time
	group    singleflight.Group
}

// NewResolver builds a Resolver; now may be nil (time.Now).
func NewResolver(cfg ResolverConfig, c *Catalog, upstream puller.ManifestSource, log *slog.Logger, now func() time.Time) (*Resolver, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if now == nil {
		now = time.Now
	}
	return &Resolver{cfg: cfg, catalog: c, upstream: upstream, log: log, now: now}, nil
}

// Resolve returns the descriptor ref points at. Digest references are answered
// without the network when the catalog knows their media type; concurrent
// resolutions of one reference share one upstream call.
func (r *Resolver) Resolve(ctx context.Context, ref name.Reference) (Resolution, error) {
	key := ref.Name()
	if img, ok := r.catalog.Get(key); ok {
		_, byDigest := ref.(name.Digest)
		if byDigest || r.now().Sub(img.ResolvedAt) < r.cfg.TTL {
			return Resolution{Descriptor: descriptor(img), Cached: true}, nil
		}
	}
	v, err, _ := r.group.Do(key, func() (any, error) {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), r.cfg.Timeout)
		defer cancel()
		return r.upstream.Resolve(ctx, ref)
	})
	if err == nil {
		desc := v.(puller.Descriptor)
		img := Image{Ref: key, Digest: desc.Digest, MediaType: desc.MediaType, Size: desc.Size, ResolvedAt: r.now()}
		if perr := r.catalog.Put(img); perr != nil {
			r.log.Warn("recording resolved tag", "ref", key, "err", perr)
		}
		return Resolution{Descriptor: desc}, nil
	}
	if r.cfg.ServeStale && !errors.Is(err, puller.ErrNotFound) && !errors.Is(err, puller.ErrUnauthorized) {
		if img, ok := r.catalog.Get(key); ok {
			r.log.Warn("upstream unavailable, serving last known digest", "ref", key, "digest", img.Digest, "resolvedAt", img.ResolvedAt, "err", err)
			return Resolution{Descriptor: descriptor(img), Stale: true}, nil
		}
	}
	return Resolution{}, err // the upstream names the reference already
}

func descriptor(img Image) puller.Descriptor {
	return puller.Descriptor{Digest: img.Digest, MediaType: img.MediaType, Size: img.Size}
}
