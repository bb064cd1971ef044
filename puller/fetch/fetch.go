package fetch

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"golang.org/x/sync/singleflight"
	"golang.org/x/time/rate"

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
	// ChunkSize aligns the ranges fetched for readers of lazily opened blobs
	// (OpenLazy): a read fetches the chunks that cover it. For it and the
	// two next fields, 0 means DefaultConfig's value.
	ChunkSize int64
	// MaxRangeRequest bounds one range request: the missing chunks a read
	// needs are coalesced into requests of at most this many bytes, sent
	// in parallel.
	MaxRangeRequest int64
	// RangeConcurrency bounds the range requests in flight, all blobs
	// together.
	RangeConcurrency int
	// BackgroundRate bounds, in bytes per second and for the node (all
	// blobs together), how fast lazily opened blobs fill in the bytes no
	// reader asked for. 0: unlimited. A whole-blob reader (Open, Ensure)
	// frees that blob from it.
	BackgroundRate int64
	// DemandQuiet makes the background fill yield to readers: it waits
	// until no range request for a reader has been in flight for this long
	// (a container starting reads its start-up files in bursts), at most
	// MaxYield at a time, so that it still progresses under constant
	// reading. 0: the fill does not yield.
	DemandQuiet time.Duration
	MaxYield    time.Duration
	// Ranges, when the Source serves no ranges itself (the peer network),
	// is where readers' range requests go (the origin registry), while the
	// fill and whole-blob readers still take the blob from the Source. Its
	// bytes are counted as upstream bytes in thaw_fetched_bytes_total.
	Ranges puller.RangeSource
}

// DefaultConfig: a stream idle for 30 s is cut; three resumptions, 200 ms apart
// at first.
// Lazily opened blobs: 1 MiB chunks, requests of up to 4 MiB, 4 in flight,
// the rest filled in at 32 MiB/s once readers have been quiet for 1 s
// (yielding at most 10 s at a time).
func DefaultConfig() Config {
	return Config{IdleTimeout: 30 * time.Second, Retries: 3, RetryBackoff: 200 * time.Millisecond, SourceName: metrics.SourceUpstream, CountBytes: true, ManifestTimeout: 30 * time.Second,
		ChunkSize: 1 << 20, MaxRangeRequest: 4 << 20, RangeConcurrency: 4, BackgroundRate: 32 << 20,
		DemandQuiet: time.Second, MaxYield: 10 * time.Second}
}

// Validate reports a configuration that cannot work.
func (c Config) Validate() error {
	if c.IdleTimeout <= 0 || c.ManifestTimeout <= 0 || c.Retries < 0 || c.RetryBackoff < 0 || c.SourceName == "" {
		return fmt.Errorf("fetch: idle and manifest timeouts must be > 0, retries and backoff >= 0, source name set (got idle %s, manifest %s, retries %d, backoff %s, source %q)",
			c.IdleTimeout, c.ManifestTimeout, c.Retries, c.RetryBackoff, c.SourceName)
	}
	if c.DemandQuiet < 0 || c.MaxYield < 0 {
		return fmt.Errorf("fetch: demand quiet %s and max yield %s must not be negative", c.DemandQuiet, c.MaxYield)
	}
	if c.ChunkSize < 0 || c.MaxRangeRequest < 0 || c.MaxRangeRequest > 0 && c.MaxRangeRequest < c.ChunkSize || c.RangeConcurrency < 0 || c.BackgroundRate < 0 {
		return fmt.Errorf("fetch: chunk size, max range request (at least the chunk size), range concurrency and background rate must not be negative; 0 means the default (got chunk %d, max request %d, concurrency %d, rate %d)",
			c.ChunkSize, c.MaxRangeRequest, c.RangeConcurrency, c.BackgroundRate)
	}
	return nil
}

// Fetcher opens blobs and manifests from the store, fetching what is missing.
type Fetcher struct {
	cfg    Config
	store  store.ContentStore
	source puller.Source
	ranges puller.RangeSource // source, if it serves ranges, else Config.Ranges
	// fillRanges: the source itself serves ranges, so the fill asks for
	// chunks; otherwise it streams from the source.
	fillRanges bool
	manifests  puller.ManifestSource
	metrics    *metrics.Puller
	log        *slog.Logger

	// base is the context of every detached fetch; Close cancels it.
	base   context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	// rangeSlots bounds the range requests in flight.
	rangeSlots chan struct{}
	// background paces the fills of lazily opened blobs, all together;
	// nil: unlimited.
	background *rate.Limiter
	// demand tracks the range requests for readers, for the fill to yield
	// to (Config.DemandQuiet).
	demand demandTracker

	mu     sync.Mutex
	active map[v1.Hash]*fetch

	manifestGroup singleflight.Group
}

// fetch is one blob being brought in. started is closed once the ingestion
// exists (readers may open the partial blob) or the fetch failed to start,
// with startErr written before; done once it finished, with err written
// before. The fields of the range machinery are in lazy.go.
type fetch struct {
	started  chan struct{}
	startErr error
	done     chan struct{}
	err      error
	ranged
}

// New returns a Fetcher. Close stops its fetches.
func New(cfg Config, st store.ContentStore, src puller.Source, manifests puller.ManifestSource, m *metrics.Puller, log *slog.Logger) (*Fetcher, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	def := DefaultConfig()
	cfg.ChunkSize = cmp.Or(cfg.ChunkSize, def.ChunkSize)
	cfg.MaxRangeRequest = cmp.Or(cfg.MaxRangeRequest, max(def.MaxRangeRequest, cfg.ChunkSize))
	cfg.RangeConcurrency = cmp.Or(cfg.RangeConcurrency, def.RangeConcurrency)
	base, cancel := context.WithCancel(context.Background())
	rs, fillRanges := src.(puller.RangeSource)
	if !fillRanges && cfg.Ranges != nil {
		rs = cfg.Ranges
	}
	return &Fetcher{
		cfg: cfg, store: st, source: src, ranges: rs, fillRanges: fillRanges, manifests: manifests, metrics: m, log: log,
		base: base, cancel: cancel, active: map[v1.Hash]*fetch{}, rangeSlots: make(chan struct{}, cfg.RangeConcurrency),
		background: newBackgroundLimiter(cfg),
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
// or brought in by a fetch, partial and readable as bytes arrive or already
// complete if the fetch was quick (source: the fetcher's SourceName). The caller closes the blob. ctx bounds the wait for
// the fetch to start and the reads of a partial blob, not the fetch itself.
func (f *Fetcher) Open(ctx context.Context, repo name.Repository, dgst v1.Hash) (store.Blob, string, error) {
	return f.open(ctx, repo, dgst, false)
}

func (f *Fetcher) open(ctx context.Context, repo name.Repository, dgst v1.Hash, lazy bool) (store.Blob, string, error) {
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

	ft := f.start(repo, dgst, lazy)
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
	// Complete already or not, the bytes came through this fetch.
	if lazy && !b.Complete() {
		b = &lazyBlob{Blob: b, f: f, dgst: dgst}
	}
	return b, f.cfg.SourceName, nil
}

// Ensure makes the blob complete in the store and reports whether it already
// was.
func (f *Fetcher) Ensure(ctx context.Context, repo name.Repository, dgst v1.Hash) (cached bool, err error) {
	if info, err := f.store.Stat(ctx, dgst); err == nil && info.Complete {
		return true, nil
	}
	ft := f.start(repo, dgst, false)
	select {
	case <-ft.done:
		return false, ft.err
	case <-ctx.Done():
		return false, ctx.Err()
	}
}

// start returns the running fetch of dgst, starting one if there is none.
// A lazy fetch fills in at the background rate; a fetch for a whole-blob
// reader (lazy false) at full speed, also when it joins a lazy one.
func (f *Fetcher) start(repo name.Repository, dgst v1.Hash, lazy bool) *fetch {
	f.mu.Lock()
	defer f.mu.Unlock()
	for {
		ft, ok := f.active[dgst]
		if !ok {
			break
		}
		if ft.ctx.Err() == nil {
			if !lazy {
				ft.unlimit()
			}
			return ft
		}
		// It is failing (or closing): let it end, so that this reader
		// gets a new fetch rather than the old error. Ending takes no
		// more than aborting its ingestion.
		f.mu.Unlock()
		<-ft.done
		f.mu.Lock()
	}
	ft := &fetch{started: make(chan struct{}), done: make(chan struct{})}
	ft.init(f, repo, dgst, lazy)
	if lazy {
		// A lazy open comes just before its reader's first range: the
		// fill counts it as reading, and waits its quiet time.
		f.demand.touch(time.Now())
	}
	f.active[dgst] = ft
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		defer ft.cancel(nil)
		f.metrics.InFlight.Inc()
		defer f.metrics.InFlight.Dec()
		started := false
		err := f.run(ft, func() { started = true; close(ft.started) })
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

// run brings the blob into the store, calling started as soon as readers can
// open the partial blob. The fill streams the missing ranges in order while
// range requests for readers (lazy.go) bring the ranges they wait for.
func (f *Fetcher) run(ft *fetch, started func()) error {
	repo, dgst := ft.repo, ft.dgst
	log := f.log.With("digest", dgst.String(), "repo", repo.String())
	begin := time.Now()

	// The first attempt's stream, if the source opened one, is the fill's
	// first.
	at := f.newAttempt(ft.ctx)
	ing, size, body, err := f.ingest(at.ctx, repo, dgst, ft.lazy)
	if body == nil {
		at.end()
	}
	if errors.Is(err, store.ErrExists) {
		return nil
	}
	if err != nil {
		return err // source and store errors name the blob already
	}
	ft.setIngestion(ing, size)
	started()
	log.Debug("fetch started", "missing", ing.Missing(0, size), "size", size, "lazy", ft.lazy)

	err = f.fill(ft, at, body)
	ft.stopRanges()
	if err == nil {
		err = ft.rangeErr()
	}
	if err != nil {
		ing.Abort(err, errors.Is(err, puller.ErrSizeMismatch))
		return err
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

// fill streams the missing ranges of the blob into its ingestion, in order,
// skipping those that range requests bring, until every byte is present.
// body, if not nil, is the source's stream from offset 0, opened in attempt
// first. A broken stream is resumed where it stopped, up to Retries times.
func (f *Fetcher) fill(ft *fetch, first attempt, body io.ReadCloser) error {
	defer func() {
		if body != nil {
			body.Close()
			first.end()
		}
	}()
	log := f.log.With("digest", ft.dgst.String(), "repo", ft.repo.String())
	backoff := f.cfg.RetryBackoff
	for failures := 0; ; {
		hole, wait, err := ft.nextHole()
		if err != nil {
			return err
		}
		if body != nil && (wait != nil || hole.Start != 0) {
			body.Close()
			first.end()
			body = nil
		}
		if wait != nil {
			select {
			case <-wait:
				continue
			case <-ft.ctx.Done():
				return context.Cause(ft.ctx)
			}
		}
		if hole.Len() == 0 {
			return nil
		}
		at := first
		if body == nil {
			at = f.newAttempt(ft.ctx)
		}
		err = f.stream(ft, at, hole, body)
		at.end()
		body = nil
		if err == nil {
			continue
		}
		if ft.ctx.Err() != nil {
			return context.Cause(ft.ctx)
		}
		if failures >= f.cfg.Retries || errors.Is(err, puller.ErrQuota) || errors.Is(err, puller.ErrSizeMismatch) || errors.Is(err, puller.ErrNotFound) {
			return err
		}
		failures++
		log.Warn("blob stream broke, resuming", "at", hole.Start, "attempt", failures, "err", err)
		select {
		case <-time.After(backoff):
		case <-ft.ctx.Done():
			return context.Cause(ft.ctx)
		}
		backoff *= 2
	}
}

// attempt is one stream from the source: its context is cancelled when the
// stream delivers nothing for IdleTimeout.
type attempt struct {
	ctx    context.Context
	cancel context.CancelCauseFunc
	idle   *time.Timer
}

func (f *Fetcher) newAttempt(parent context.Context) attempt {
	ctx, cancel := context.WithCancelCause(parent)
	idle := time.AfterFunc(f.cfg.IdleTimeout, func() {
		cancel(fmt.Errorf("no byte for %s: %w", f.cfg.IdleTimeout, puller.ErrUnavailable))
	})
	return attempt{ctx: ctx, cancel: cancel, idle: idle}
}

func (a attempt) end() {
	a.idle.Stop()
	a.cancel(nil)
}

// ingest opens the ingestion of dgst and returns it with the blob's size. A
// partial blob from an earlier run is resumed (body is nil: the fill opens
// the source where bytes are missing). Otherwise a lazy fetch from a range
// source asks for the size alone; any other gets it with the source's stream
// from offset 0, returned as body.
func (f *Fetcher) ingest(ctx context.Context, repo name.Repository, dgst v1.Hash, lazy bool) (store.Ingestion, int64, io.ReadCloser, error) {
	if info, err := f.store.Stat(ctx, dgst); err == nil && !info.Complete && info.Size > 0 {
		ing, err := f.store.Ingest(ctx, dgst, info.Size)
		return ing, info.Size, nil, err
	}
	var body io.ReadCloser
	var size int64
	var err error
	if lazy && f.ranges != nil {
		size, err = f.ranges.BlobSize(ctx, repo, dgst)
	} else {
		body, size, err = f.source.FetchBlob(ctx, repo, dgst, 0)
	}
	if err != nil {
		return nil, 0, nil, err
	}
	ing, err := f.store.Ingest(ctx, dgst, size)
	if err != nil {
		if body != nil {
			body.Close()
		}
		return nil, 0, nil, err
	}
	if body != nil && ing.Offset() != 0 {
		// The store resumed bytes we did not know of; the fill reopens.
		body.Close()
		body = nil
	}
	return ing, size, body, nil
}

// stream copies the hole's bytes into the ingestion, opening the source at
// the hole's start when body is nil (a closed range from a range source).
// It returns early, without error, where a range request for a reader took
// over the next bytes or they are present already; from a source without
// ranges it streams on to the end instead, skipping what is present.
//
// At a bounded rate from a range source, it asks for one chunk at a time,
// after the rate allows it, so the source sends no more than the rate;
// otherwise the rate (if any) paces the reads of the stream.
func (f *Fetcher) stream(ft *fetch, at attempt, hole store.Range, body io.ReadCloser) error {
	paced := false
	var own store.Range // the fill's claim while paced
	// From a source that only streams (the peer network), reopening at each
	// gap the readers left would start its stream again (a peer download
	// reads ahead), so the fill streams on to the blob's end, writing only
	// what is still missing.
	through := !ft.fillRangesUsable()
	if through {
		hole.End = ft.size
	}
	if body == nil {
		if through && ft.paced() {
			// Opening a peer stream starts its download at full speed:
			// not while readers wait for their ranges.
			at.idle.Stop()
			if err := ft.yield(at.ctx); err != nil {
				return err
			}
			at.idle.Reset(f.cfg.IdleTimeout)
		}
		if ft.paced() && ft.fillRangesUsable() {
			hole.End = min(hole.End, hole.Start+f.cfg.ChunkSize)
			// Waiting for the rate is not the source stalling.
			at.idle.Stop()
			if err := ft.pace(at.ctx, int(hole.Len())); err != nil {
				return err
			}
			at.idle.Reset(f.cfg.IdleTimeout)
			// Readers may have taken the hole while the fill waited.
			var ok bool
			if hole, ok = ft.claimHole(hole); !ok {
				return nil
			}
			defer ft.release(hole)
			own, paced = hole, true
		}
		var err error
		body, err = ft.open(at.ctx, hole)
		if err != nil {
			return err
		}
	}
	defer body.Close()
	counters := ft.counters(false)
	buf := make([]byte, fillBuffer)
	for pos := hole.Start; pos < hole.End; {
		n, err := body.Read(buf[:min(int64(len(buf)), hole.End-pos)])
		if n > 0 {
			at.idle.Reset(f.cfg.IdleTimeout)
			for _, c := range counters {
				c.Add(float64(n))
			}
			if !paced {
				at.idle.Stop()
				if werr := ft.pace(at.ctx, n); werr != nil {
					return werr
				}
				at.idle.Reset(f.cfg.IdleTimeout)
			}
			if through {
				if werr := ft.writeMissing(buf[:n], pos); werr != nil {
					return werr
				}
				pos += int64(n)
				if len(ft.ing.Missing(pos, ft.size)) == 0 {
					return nil
				}
			} else {
				more, werr := ft.write(buf[:n], pos, own)
				if werr != nil {
					return werr
				}
				pos += int64(n)
				if !more {
					return nil
				}
			}
		}
		if err == io.EOF && pos < hole.End {
			return fmt.Errorf("blob %s: stream ended at %d of %d bytes: %w", ft.dgst, pos, ft.size, io.ErrUnexpectedEOF)
		}
		if err != nil && err != io.EOF {
			if cause := context.Cause(at.ctx); cause != nil {
				return cause
			}
			return err
		}
	}
	return nil
}
