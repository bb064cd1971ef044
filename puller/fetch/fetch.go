package fetch

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/singleflight"

	"github.com/thaw-dev/thaw/metrics"
	"github.com/thaw-dev/thaw/puller"
	"github.com/thaw-dev/thaw/puller/store"
)

// Config tunes the fetcher.
type Config struct {
	// IdleTimeout aborts a source stream that delivers no byte for this long.
	IdleTimeout time.Duration
	// Retries is how many times a broken stream is resumed before the fetch fails.
	Retries int
	// RetryBackoff is the wait before the first retry; it doubles after each.
	RetryBackoff time.Duration
	// SourceName labels the blobs this fetcher brings in, in the mirror's
	// metrics and X-Thaw-Source header (metrics.SourceUpstream).
	SourceName string
	// CountBytes counts fetched bytes in thaw_fetched_bytes_total under
	// SourceName. A Source that counts its own bytes by origin (the peer
	// network: peer or upstream) turns it off.
	CountBytes bool
	// OnCommit, if set, is called after a blob was verified and committed.
	OnCommit func(dgst v1.Hash, size int64)
	// ManifestTimeout bounds a manifest fetch, which runs detached from the
	// requests that share it.
	ManifestTimeout time.Duration
}

// DefaultConfig: a stream idle for 30 s is cut; three resumptions, 200 ms apart
// at first.
func DefaultConfig() Config {
	return Config{IdleTimeout: 30 * time.Second, Retries: 3, RetryBackoff: 200 * time.Millisecond, SourceName: metrics.SourceUpstream, CountBytes: true, ManifestTimeout: 30 * time.Second}
}

// Validate reports a configuration that cannot work.
func (c Config) Validate() error {
	if c.IdleTimeout <= 0 || c.ManifestTimeout <= 0 || c.Retries < 0 || c.RetryBackoff < 0 || c.SourceName == "" {
		return fmt.Errorf("fetch: idle and manifest timeouts must be > 0, retries and backoff >= 0, source name set (got idle %s, manifest %s, retries %d, backoff %s, source %q)",
			c.IdleTimeout, c.ManifestTimeout, c.Retries, c.RetryBackoff, c.SourceName)
	}
	return nil
}

// Fetcher opens blobs and manifests from the store, fetching what is missing.
type Fetcher struct {
	cfg       Config
	store     store.ContentStore
	source    puller.Source
	manifests puller.ManifestSource
	metrics   *metrics.Puller
	log       *slog.Logger

	// base is the context of every detached fetch; Close cancels it.
	base   context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu     sync.Mutex
	active map[v1.Hash]*fetch

	manifestGroup singleflight.Group
}

// fetch is one blob being brought in. started is closed once the ingestion
// exists (readers may open the partial blob) or the fetch failed to start,
// with startErr written before; done once it finished, with err written
// before.
type fetch struct {
	started  chan struct{}
	startErr error
	done     chan struct{}
	err      error
}

// New returns a Fetcher. Close stops its fetches.
func New(cfg Config, st store.ContentStore, src puller.Source, manifests puller.ManifestSource, m *metrics.Puller, log *slog.Logger) (*Fetcher, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	base, cancel := context.WithCancel(context.Background())
	return &Fetcher{
		cfg: cfg, store: st, source: src, manifests: manifests, metrics: m, log: log,
		base: base, cancel: cancel, active: map[v1.Hash]*fetch{},
	}, nil
}

// Close cancels running fetches (their partial blobs stay on disk to be
// resumed) and waits for them to stop.
func (f *Fetcher) Close() error {
	f.cancel()
	f.wg.Wait()
	return nil
}

// Open returns the blob: complete from the store (source metrics.SourceCache),
// or partial while it is fetched, readable as bytes arrive (source: the
// fetcher's SourceName). The caller closes the blob. ctx bounds the wait for
// the fetch to start and the reads of a partial blob, not the fetch itself.
func (f *Fetcher) Open(ctx context.Context, repo name.Repository, dgst v1.Hash) (store.Blob, string, error) {
	if b, err := f.store.Open(ctx, dgst); err == nil {
		if b.Complete() {
			f.metrics.CacheRequests.WithLabelValues("blob", "hit").Inc()
			return b, metrics.SourceCache, nil
		}
		b.Close()
	} else if !errors.Is(err, puller.ErrNotFound) {
		return nil, "", fmt.Errorf("open blob %s: %w", dgst, err)
	}
	f.metrics.CacheRequests.WithLabelValues("blob", "miss").Inc()

	ft := f.start(repo, dgst)
	select {
	case <-ft.started:
	case <-ctx.Done():
		return nil, "", ctx.Err()
	}
	if ft.startErr != nil {
		return nil, "", ft.startErr
	}
	b, err := f.store.Open(ctx, dgst)
	if err != nil {
		select {
		case <-ft.done:
			if ft.err != nil {
				return nil, "", ft.err
			}
		default:
		}
		return nil, "", fmt.Errorf("open blob %s after its fetch started: %w", dgst, err)
	}
	if b.Complete() {
		return b, metrics.SourceCache, nil
	}
	return b, f.cfg.SourceName, nil
}

// Ensure makes the blob complete in the store and reports whether it already
// was.
func (f *Fetcher) Ensure(ctx context.Context, repo name.Repository, dgst v1.Hash) (cached bool, err error) {
	if info, err := f.store.Stat(ctx, dgst); err == nil && info.Complete {
		return true, nil
	}
	ft := f.start(repo, dgst)
	select {
	case <-ft.done:
		return false, ft.err
	case <-ctx.Done():
		return false, ctx.Err()
	}
}

// start returns the running fetch of dgst, starting one if there is none.
func (f *Fetcher) start(repo name.Repository, dgst v1.Hash) *fetch {
	f.mu.Lock()
	defer f.mu.Unlock()
	if ft, ok := f.active[dgst]; ok {
		return ft
	}
	ft := &fetch{started: make(chan struct{}), done: make(chan struct{})}
	f.active[dgst] = ft
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		f.metrics.InFlight.Inc()
		defer f.metrics.InFlight.Dec()
		started := false
		err := f.run(repo, dgst, func() { started = true; close(ft.started) })
		if err != nil {
			f.metrics.UpstreamErrors.WithLabelValues(puller.ErrorKind(err)).Inc()
		}
		f.mu.Lock()
		delete(f.active, dgst)
		f.mu.Unlock()
		if !started {
			ft.startErr = err
			close(ft.started)
		}
		ft.err = err
		close(ft.done)
	}()
	return ft
}

// run brings dgst into the store, calling started as soon as readers can open
// the partial blob.
func (f *Fetcher) run(repo name.Repository, dgst v1.Hash, started func()) error {
	log := f.log.With("digest", dgst.String(), "repo", repo.String())
	begin := time.Now()

	at := f.newAttempt()
	ing, size, body, err := f.ingest(at.ctx, repo, dgst)
	if errors.Is(err, store.ErrExists) {
		at.end()
		return nil
	}
	if err != nil {
		at.end()
		return err // source and store errors name the blob already
	}
	started()
	log.Debug("fetch started", "offset", ing.Offset(), "size", size)

	backoff := f.cfg.RetryBackoff
	for attempt := 0; ; attempt++ {
		err = f.stream(at, repo, dgst, ing, size, body)
		at.end()
		if err == nil {
			break
		}
		if f.base.Err() != nil || attempt >= f.cfg.Retries ||
			errors.Is(err, puller.ErrQuota) || errors.Is(err, puller.ErrSizeMismatch) || errors.Is(err, puller.ErrNotFound) {
			ing.Abort(err, errors.Is(err, puller.ErrSizeMismatch))
			return err
		}
		log.Warn("blob stream broke, resuming", "offset", ing.Offset(), "attempt", attempt+1, "err", err)
		select {
		case <-time.After(backoff):
		case <-f.base.Done():
		}
		backoff *= 2
		at, body = f.newAttempt(), nil
	}
	if err := ing.Commit(f.base); err != nil {
		log.Error("blob refused", "err", err)
		return err
	}
	f.metrics.PullDuration.WithLabelValues(f.cfg.SourceName).Observe(time.Since(begin).Seconds())
	log.Debug("fetch complete", "seconds", time.Since(begin).Seconds())
	if f.cfg.OnCommit != nil {
		f.cfg.OnCommit(dgst, size)
	}
	return nil
}

// attempt is one stream from the source: its context is cancelled when the
// stream delivers nothing for IdleTimeout.
type attempt struct {
	ctx    context.Context
	cancel context.CancelCauseFunc
	idle   *time.Timer
}

func (f *Fetcher) newAttempt() attempt {
	ctx, cancel := context.WithCancelCause(f.base)
	idle := time.AfterFunc(f.cfg.IdleTimeout, func() {
		cancel(fmt.Errorf("no byte for %s: %w", f.cfg.IdleTimeout, puller.ErrUnavailable))
	})
	return attempt{ctx: ctx, cancel: cancel, idle: idle}
}

func (a attempt) end() {
	a.idle.Stop()
	a.cancel(nil)
}

// noCounter discards counts.
type noCounter struct{ prometheus.Counter }

func (noCounter) Add(float64) {}

// ingest opens the ingestion of dgst and returns it with the blob's size. A
// partial blob from an earlier run is resumed (body is nil: stream opens the
// source at the offset); otherwise the source's first answer gives the size
// and its body is the first stream.
func (f *Fetcher) ingest(ctx context.Context, repo name.Repository, dgst v1.Hash) (store.Ingestion, int64, io.ReadCloser, error) {
	if info, err := f.store.Stat(ctx, dgst); err == nil && !info.Complete && info.Size > 0 {
		ing, err := f.store.Ingest(ctx, dgst, info.Size)
		return ing, info.Size, nil, err
	}
	body, size, err := f.source.FetchBlob(ctx, repo, dgst, 0)
	if err != nil {
		return nil, 0, nil, err
	}
	ing, err := f.store.Ingest(ctx, dgst, size)
	if err != nil {
		body.Close()
		return nil, 0, nil, err
	}
	if ing.Offset() != 0 {
		// The store resumed bytes we did not know of; reopen at the offset.
		body.Close()
		body = nil
	}
	return ing, size, body, nil
}

// stream copies the blob into ing from ing's offset to the end, opening the
// source at that offset when body is nil.
func (f *Fetcher) stream(at attempt, repo name.Repository, dgst v1.Hash, ing store.Ingestion, size int64, body io.ReadCloser) error {
	if body == nil {
		var total int64
		var err error
		body, total, err = f.source.FetchBlob(at.ctx, repo, dgst, ing.Offset())
		if err != nil {
			return err
		}
		if total != size {
			body.Close()
			return fmt.Errorf("blob %s: size was %d, source now says %d: %w", dgst, size, total, puller.ErrSizeMismatch)
		}
	}
	defer body.Close()
	var counter prometheus.Counter = noCounter{}
	if f.cfg.CountBytes {
		counter = f.metrics.FetchedBytes.WithLabelValues(f.cfg.SourceName)
	}
	buf := make([]byte, 256<<10)
	for ing.Offset() < size {
		n, err := body.Read(buf)
		if n > 0 {
			at.idle.Reset(f.cfg.IdleTimeout)
			if _, werr := ing.Write(buf[:n]); werr != nil {
				return werr
			}
			counter.Add(float64(n))
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			if cause := context.Cause(at.ctx); cause != nil {
				return cause
			}
			return err
		}
	}
	if ing.Offset() != size {
		return fmt.Errorf("blob %s: stream ended at %d of %d bytes: %w", dgst, ing.Offset(), size, io.ErrUnexpectedEOF)
	}
	return nil
}
