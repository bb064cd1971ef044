package fetch

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"

	"github.com/thaw-dev/thaw/metrics"
	"github.com/thaw-dev/thaw/puller"
	"github.com/thaw-dev/thaw/puller/store"
)

// fillBuffer is the fill's read size, and the burst of its rate limit.
const fillBuffer = 256 << 10

// ranged is the part of a fetch that lets readers ask for ranges: which
// ranges are being written (claimed, by range requests or by the fill for
// the buffer it writes), so that no byte is fetched twice, and the rate of
// the fill.
type ranged struct {
	f    *Fetcher
	repo name.Repository
	dgst v1.Hash
	lazy bool // opened by OpenLazy: the fill is background work

	// ctx ends the fetch: Close, or a range request that failed for good
	// (the cause).
	ctx    context.Context
	cancel context.CancelCauseFunc

	mu       sync.Mutex
	ing      store.Ingestion // set before started is closed
	size     int64
	claimed  []store.Range
	wake     chan struct{} // closed when a claim is released; nil when nobody waits
	noRanges bool          // the source turned out to stream whole blobs only
	lifted   chan struct{} // closed when the fill no longer keeps to the background rate
	stopped  bool          // no new range requests: the fetch is ending
	err      error         // why a range request failed for good
	workers  sync.WaitGroup
}

func (r *ranged) init(f *Fetcher, repo name.Repository, dgst v1.Hash, lazy bool) {
	r.f, r.repo, r.dgst, r.lazy = f, repo, dgst, lazy
	r.ctx, r.cancel = context.WithCancelCause(f.base)
	r.lifted = make(chan struct{})
	if !lazy || f.background == nil {
		close(r.lifted)
	}
}

// newBackgroundLimiter is the node's budget for background fills, shared by
// every lazily opened blob; nil for none. Its bucket starts empty: the
// first background chunk comes after the readers' first ranges.
func newBackgroundLimiter(cfg Config) *rate.Limiter {
	if cfg.BackgroundRate == 0 {
		return nil
	}
	burst := int(max(fillBuffer, cfg.ChunkSize))
	lim := rate.NewLimiter(rate.Limit(cfg.BackgroundRate), burst)
	lim.ReserveN(time.Now(), burst)
	return lim
}

// paced reports whether the fill keeps to the background rate.
func (r *ranged) paced() bool {
	select {
	case <-r.lifted:
		return false
	default:
		return true
	}
}

// unlimit frees the fill from the background rate, also while it waits.
func (r *ranged) unlimit() {
	r.mu.Lock()
	if r.paced() {
		close(r.lifted)
	}
	r.mu.Unlock()
}

// demandTracker knows when readers last had range requests in flight.
type demandTracker struct {
	inFlight atomic.Int64
	last     atomic.Int64 // unix nanoseconds of the last request's end
}

func (d *demandTracker) begin() { d.inFlight.Add(1) }

// touch counts now as a moment readers were active.
func (d *demandTracker) touch(now time.Time) { d.last.Store(now.UnixNano()) }

func (d *demandTracker) end(now time.Time) {
	d.last.Store(now.UnixNano())
	d.inFlight.Add(-1)
}

// quietIn is how long until readers will have been quiet for quiet: 0 when
// they have.
func (d *demandTracker) quietIn(now time.Time, quiet time.Duration) time.Duration {
	if d.inFlight.Load() > 0 {
		return quiet
	}
	return max(0, time.Unix(0, d.last.Load()).Add(quiet).Sub(now))
}

// yield waits, for a paced fill, until readers have been quiet for
// Config.DemandQuiet, at most Config.MaxYield.
func (r *ranged) yield(ctx context.Context) error {
	quiet := r.f.cfg.DemandQuiet
	if quiet == 0 {
		return nil
	}
	deadline := time.Now().Add(r.f.cfg.MaxYield)
	for {
		now := time.Now()
		wait := min(r.f.demand.quietIn(now, quiet), deadline.Sub(now))
		if wait <= 0 {
			return nil
		}
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-r.lifted:
			t.Stop()
			return nil
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("blob %s: yielding to readers: %w", r.dgst, context.Cause(ctx))
		}
	}
}

// pace waits until readers are quiet (yield) and the background rate
// allows n more bytes, or the fill is freed from both.
func (r *ranged) pace(ctx context.Context, n int) error {
	if !r.paced() {
		return nil
	}
	if err := r.yield(ctx); err != nil {
		return err
	}
	res := r.f.background.ReserveN(time.Now(), n)
	if !res.OK() {
		return fmt.Errorf("blob %s: %d bytes exceed the background rate's burst", r.dgst, n)
	}
	d := res.Delay()
	if d == 0 {
		return nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-r.lifted:
		res.Cancel()
		return nil
	case <-ctx.Done():
		res.Cancel()
		return fmt.Errorf("blob %s: waiting for the background rate: %w", r.dgst, context.Cause(ctx))
	}
}

func (r *ranged) setIngestion(ing store.Ingestion, size int64) {
	r.mu.Lock()
	r.ing, r.size = ing, size
	r.mu.Unlock()
}

// nextHole returns the first missing range nobody is writing; a channel to
// wait on when every missing byte is being written; or neither when the blob
// is all there.
func (r *ranged) nextHole() (store.Range, <-chan struct{}, error) {
	if r.ctx.Err() != nil {
		return store.Range{}, nil, context.Cause(r.ctx)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	missing := r.ing.Missing(0, r.size)
	if len(missing) == 0 {
		return store.Range{}, nil, nil
	}
	free := store.Subtract(missing, r.claimed)
	if len(free) == 0 {
		if r.wake == nil {
			r.wake = make(chan struct{})
		}
		return store.Range{}, r.wake, nil
	}
	return free[0], nil, nil
}

// release ends a claim and wakes the fill.
func (r *ranged) release(c store.Range) {
	r.mu.Lock()
	for i, x := range r.claimed {
		if x == c {
			r.claimed = append(r.claimed[:i], r.claimed[i+1:]...)
			break
		}
	}
	if r.wake != nil {
		close(r.wake)
		r.wake = nil
	}
	r.mu.Unlock()
}

// stopRanges refuses new range requests and waits for those in flight.
func (r *ranged) stopRanges() {
	r.mu.Lock()
	r.stopped = true
	r.mu.Unlock()
	r.workers.Wait()
}

func (r *ranged) rangeErr() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.err
}

// fail ends the fetch because a range request failed for good.
func (r *ranged) fail(err error) {
	r.mu.Lock()
	if r.err == nil {
		r.err = err
	}
	r.mu.Unlock()
	r.cancel(err)
}

// counters are the counters the bytes of a range request (demand) or of
// the fill add to.
func (r *ranged) counters(demand bool) []prometheus.Counter {
	var cs []prometheus.Counter
	switch {
	case demand && !r.f.fillRanges:
		// Readers' ranges from Config.Ranges: the origin.
		cs = append(cs, r.f.metrics.FetchedBytes.WithLabelValues(metrics.SourceUpstream))
	case r.f.cfg.CountBytes:
		cs = append(cs, r.f.metrics.FetchedBytes.WithLabelValues(r.f.cfg.SourceName))
	}
	switch {
	case demand:
		cs = append(cs, r.f.metrics.Lazy.FetchedBytes.WithLabelValues(metrics.LazyDemand))
	case r.lazy:
		cs = append(cs, r.f.metrics.Lazy.FetchedBytes.WithLabelValues(metrics.LazyBackground))
	}
	return cs
}

// rangesUsable reports whether range requests go to the source.
func (r *ranged) rangesUsable() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.f.ranges != nil && !r.noRanges
}

// fillRangesUsable reports whether the fill asks the source for ranges.
func (r *ranged) fillRangesUsable() bool {
	return r.f.fillRanges && r.rangesUsable()
}

// open opens the source for the fill at the hole's start: a closed range
// from a range source, else the stream to the blob's end (the fill stops
// reading at the hole's end).
func (r *ranged) open(ctx context.Context, hole store.Range) (io.ReadCloser, error) {
	f := r.f
	if r.fillRangesUsable() {
		body, err := f.ranges.FetchRange(ctx, r.repo, r.dgst, hole.Start, hole.Len())
		if !errors.Is(err, puller.ErrNoRanges) {
			return body, err
		}
		r.noSourceRanges(err)
	}
	body, total, err := f.source.FetchBlob(ctx, r.repo, r.dgst, hole.Start)
	if err != nil {
		return nil, err
	}
	if total != r.size {
		body.Close()
		return nil, fmt.Errorf("blob %s: size was %d, source now says %d: %w", r.dgst, r.size, total, puller.ErrSizeMismatch)
	}
	return body, nil
}

// noSourceRanges records that the source serves whole blobs only: readers
// then wait for the fill, which goes at full speed.
func (r *ranged) noSourceRanges(err error) {
	r.mu.Lock()
	first := !r.noRanges
	r.noRanges = true
	r.mu.Unlock()
	r.unlimit()
	if first {
		r.f.log.Info("source serves whole blobs only; readers of ranges wait for the stream", "digest", r.dgst.String(), "err", err)
	}
}

// claimHole claims, for a paced fill, the part of hole from its start that
// is still missing and free, so that range requests wait for it rather
// than fetch it again. ok is false when the hole's start was taken meanwhile.
func (r *ranged) claimHole(hole store.Range) (store.Range, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	free := store.Subtract(r.ing.Missing(hole.Start, hole.End), r.claimed)
	if len(free) == 0 || free[0].Start != hole.Start {
		return store.Range{}, false
	}
	r.claimed = append(r.claimed, free[0])
	return free[0], true
}

// write writes the fill's bytes p at pos, up to the first byte a range
// request is writing (own is the fill's own claim, if any). more is false
// when the fill should look for the next hole: it reached bytes that others
// write or wrote.
func (r *ranged) write(p []byte, pos int64, own store.Range) (more bool, err error) {
	end := pos + int64(len(p))
	r.mu.Lock()
	for _, c := range r.claimed {
		if c != own && c.Start < end && c.End > pos {
			end = max(pos, min(end, c.Start))
		}
	}
	mine := store.Range{Start: pos, End: end}
	if end > pos {
		r.claimed = append(r.claimed, mine)
	}
	r.mu.Unlock()
	if end > pos {
		_, err = r.ing.WriteAt(p[:end-pos], pos)
		r.release(mine)
		if err != nil {
			return false, err
		}
	}
	if end < pos+int64(len(p)) {
		return false, nil
	}
	return end >= r.size || len(r.ing.Missing(end, end+1)) > 0, nil
}

// writeMissing writes the bytes of p (at pos) that are missing and that no
// range request is writing, and skips the rest.
func (r *ranged) writeMissing(p []byte, pos int64) error {
	end := pos + int64(len(p))
	r.mu.Lock()
	free := store.Subtract(r.ing.Missing(pos, end), r.claimed)
	r.claimed = append(r.claimed, free...)
	r.mu.Unlock()
	var err error
	for _, c := range free {
		if err == nil {
			_, err = r.ing.WriteAt(p[c.Start-pos:c.End-pos], c.Start)
		}
		r.release(c)
	}
	return err
}

// demand starts range requests for the missing chunks covering [start, end)
// that nobody is writing yet, coalesced into requests of at most
// MaxRangeRequest bytes. It does not wait for them.
func (r *ranged) demand(start, end int64) {
	f := r.f
	if f.ranges == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.ing == nil || r.stopped || r.noRanges || r.ctx.Err() != nil {
		return
	}
	cs := f.cfg.ChunkSize
	start = max(start, 0) / cs * cs
	end = min((end+cs-1)/cs*cs, r.size)
	for _, run := range store.Subtract(r.ing.Missing(start, end), r.claimed) {
		for s := run.Start; s < run.End; s += f.cfg.MaxRangeRequest {
			piece := store.Range{Start: s, End: min(s+f.cfg.MaxRangeRequest, run.End)}
			r.claimed = append(r.claimed, piece)
			r.workers.Add(1)
			go r.fetchPiece(piece)
		}
	}
}

// fetchPiece brings a claimed range for readers, retrying a broken request
// for what is still missing. When it fails for good the fetch fails with it,
// so the readers waiting get the error.
func (r *ranged) fetchPiece(piece store.Range) {
	f := r.f
	defer r.workers.Done()
	defer r.release(piece)
	select {
	case f.rangeSlots <- struct{}{}:
	case <-r.ctx.Done():
		return
	}
	defer func() { <-f.rangeSlots }()
	f.demand.begin()
	defer func() { f.demand.end(time.Now()) }()
	begin := time.Now()
	backoff := f.cfg.RetryBackoff
	for attempt := 0; ; attempt++ {
		err := r.fetchRange(piece)
		if err == nil {
			f.metrics.Lazy.RangeFetchDuration.Observe(time.Since(begin).Seconds())
			return
		}
		if errors.Is(err, puller.ErrNoRanges) {
			r.noSourceRanges(err)
			return
		}
		if r.ctx.Err() != nil {
			return
		}
		if attempt >= f.cfg.Retries || errors.Is(err, puller.ErrQuota) || errors.Is(err, puller.ErrSizeMismatch) || errors.Is(err, puller.ErrNotFound) {
			f.log.Warn("range request failed", "digest", r.dgst.String(), "range", fmt.Sprintf("%d-%d", piece.Start, piece.End-1), "err", err)
			r.fail(err)
			return
		}
		select {
		case <-time.After(backoff):
		case <-r.ctx.Done():
			return
		}
		backoff *= 2
	}
}

// fetchRange copies the missing bytes of a claimed range from the source.
func (r *ranged) fetchRange(piece store.Range) error {
	f := r.f
	counters := r.counters(true)
	buf := make([]byte, fillBuffer)
	for _, run := range r.ing.Missing(piece.Start, piece.End) {
		err := func() error {
			at := f.newAttempt(r.ctx)
			defer at.end()
			body, err := f.ranges.FetchRange(at.ctx, r.repo, r.dgst, run.Start, run.Len())
			if err != nil {
				return err
			}
			defer body.Close()
			for pos := run.Start; pos < run.End; {
				n, err := body.Read(buf[:min(int64(len(buf)), run.End-pos)])
				if n > 0 {
					at.idle.Reset(f.cfg.IdleTimeout)
					if _, err := r.ing.WriteAt(buf[:n], pos); err != nil {
						return err
					}
					for _, c := range counters {
						c.Add(float64(n))
					}
					pos += int64(n)
				}
				if err == io.EOF && pos < run.End {
					return fmt.Errorf("blob %s: range %d-%d ended at %d: %w", r.dgst, run.Start, run.End-1, pos, io.ErrUnexpectedEOF)
				}
				if err != nil && err != io.EOF {
					if cause := context.Cause(at.ctx); cause != nil {
						return cause
					}
					return err
				}
			}
			return nil
		}()
		if err != nil {
			return err
		}
	}
	return nil
}

// OpenLazy opens a blob for a reader of ranges: like Open, except that a
// missing blob does not start streaming from its first byte at full speed.
// The returned Blob's ReadAt first fetches the missing chunks it needs
// (aligned to ChunkSize) with range requests, ahead of everything else; the
// rest of the blob fills in, in order, at BackgroundRate, and commits
// verified once complete. Its Want method (see Wanter) asks for a range
// before reading it. Bytes are fetched once: a range being written by
// anyone is waited for, not fetched again. With a Source that is not a
// puller.RangeSource, or one that turns out to ignore ranges, readers wait
// for the sequential stream, as with Open.
func (f *Fetcher) OpenLazy(ctx context.Context, repo name.Repository, dgst v1.Hash) (store.Blob, string, error) {
	return f.open(ctx, repo, dgst, f.ranges != nil)
}

// Wanter is implemented by the blobs OpenLazy returns.
type Wanter interface {
	// Want starts fetching the missing bytes of [start, end), ahead of the
	// background fill, without waiting for them.
	Want(start, end int64)
}

// lazyBlob is a partial blob whose reads fetch the ranges they need.
type lazyBlob struct {
	store.Blob
	f    *Fetcher
	dgst v1.Hash
}

var _ Wanter = (*lazyBlob)(nil)

func (b *lazyBlob) ReadAt(p []byte, off int64) (int, error) {
	b.Want(off, off+int64(len(p)))
	return b.Blob.ReadAt(p, off)
}

func (b *lazyBlob) Want(start, end int64) {
	if len(b.Blob.Missing(start, end)) == 0 {
		return
	}
	b.f.mu.Lock()
	ft := b.f.active[b.dgst]
	b.f.mu.Unlock()
	if ft != nil {
		ft.demand(start, end)
	}
}
