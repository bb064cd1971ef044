package store

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"sync"
	"sync/atomic"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/thaw-dev/thaw/puller"
)

// stream is what the readers of a partial blob share with its ingestion:
// which bytes are in the data file, and a broadcast on every change. It
// outlives ingestions: readers of a partial left on disk wait on it until a
// later ingestion writes, and it stays valid for them after the commit.
type stream struct {
	size int64
	done atomic.Bool // committed: all size bytes are readable and verified
	// prefix is how many bytes from offset 0 are present, for readers of
	// that run (the common, sequential case) to go without the lock.
	prefix atomic.Int64

	mu      sync.Mutex
	present ranges // bytes written to the data file (not yet durable nor verified)
	wake    *wakeup
	failed  error // the partial is gone for good (deleted, discarded, refused)
	// interrupted is the error of the last ingestion that ended without a
	// commit; reads of missing bytes fail with it until an ingestion resumes
	// the partial, so no reader waits on a partial that nothing is writing.
	interrupted error
}

// wakeup is one broadcast: ch is closed, after err is set, when the stream
// changes. A new one replaces it only if a reader took it, so a Write with no
// waiting reader allocates nothing.
type wakeup struct {
	ch    chan struct{}
	taken bool
	err   error
}

func newStream(size int64, present ranges) *stream {
	s := &stream{size: size, present: present, wake: &wakeup{ch: make(chan struct{})}}
	s.prefix.Store(present.runEnd(0))
	return s
}

// readyFast reports, without the lock, whether [start, end) is readable
// because it lies in the prefix or the blob is committed. false: ask
// readyLocked.
func (s *stream) readyFast(start, end int64, verified bool) bool {
	if s.done.Load() {
		return true
	}
	return end <= s.prefix.Load() && !(verified && end >= s.size)
}

// readyLocked reports whether [start, end) is readable. A read ending at the
// blob's end with verified set needs the commit.
func (s *stream) readyLocked(start, end int64, verified bool) bool {
	if s.done.Load() {
		return true
	}
	if verified && end >= s.size {
		return false
	}
	return s.present.contains(start, min(end, s.size))
}

// runEnd is the end of the readable run of bytes starting at off; off when
// the byte at off is missing. Before the commit, and with verified set, the
// run stops short of the blob's last byte.
func (s *stream) runEnd(off int64, verified bool) int64 {
	if s.done.Load() {
		return s.size
	}
	end := s.prefix.Load()
	if off >= end {
		s.mu.Lock()
		end = s.present.runEnd(off)
		s.mu.Unlock()
	}
	if verified {
		end = max(min(end, s.size-1), off)
	}
	return end
}

// presentBytes is how many bytes are in the data file.
func (s *stream) presentBytes() int64 {
	if s.done.Load() {
		return s.size
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.present.total()
}

// snapshot returns a copy of the present ranges.
func (s *stream) snapshot() ranges {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.present)
}

// missing returns the parts of [start, end) not in the data file.
func (s *stream) missing(start, end int64) []Range {
	if s.done.Load() {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.present.missing(start, end)
}

// add records that r is in the data file.
func (s *stream) add(r Range) {
	s.mu.Lock()
	s.present.add(r)
	s.prefix.Store(s.present.runEnd(0))
	s.broadcastLocked(nil)
	s.mu.Unlock()
}

// commit releases every byte.
func (s *stream) commit() {
	s.mu.Lock()
	s.present = ranges{{0, s.size}}
	s.prefix.Store(s.size)
	s.done.Store(true)
	s.broadcastLocked(nil)
	s.mu.Unlock()
}

// interrupt hands err to the readers waiting now, and to later reads of
// missing bytes until resume.
func (s *stream) interrupt(err error) {
	s.mu.Lock()
	s.interrupted = err
	s.broadcastLocked(err)
	s.mu.Unlock()
}

// resume records that an ingestion writes the partial again.
func (s *stream) resume() {
	s.mu.Lock()
	s.interrupted = nil
	s.mu.Unlock()
}

// fail ends the stream: every read of bytes not yet readable returns err.
// When the bytes were refused (puller.ErrDigestMismatch), none is readable
// any more: which of them are wrong is unknown.
func (s *stream) fail(err error) {
	s.mu.Lock()
	if s.failed == nil {
		s.failed = err
	}
	if errors.Is(err, puller.ErrDigestMismatch) {
		s.present = nil
		s.prefix.Store(0)
	}
	s.broadcastLocked(err)
	s.mu.Unlock()
}

func (s *stream) broadcastLocked(err error) {
	w := s.wake
	if !w.taken {
		return
	}
	w.err = err
	s.wake = &wakeup{ch: make(chan struct{})}
	close(w.ch)
}

// wait blocks until [start, end) is readable (see readyLocked), the stream
// fails or is interrupted, ctx is done or closed is closed.
func (s *stream) wait(ctx context.Context, closed <-chan struct{}, start, end int64, verified bool) error {
	for {
		if s.readyFast(start, end, verified) {
			return nil
		}
		s.mu.Lock()
		if s.readyLocked(start, end, verified) {
			s.mu.Unlock()
			return nil
		}
		if err := cmp.Or(s.failed, s.interrupted); err != nil {
			s.mu.Unlock()
			return err
		}
		w := s.wake
		w.taken = true
		s.mu.Unlock()

		select {
		case <-w.ch:
			if w.err != nil {
				return w.err
			}
		case <-ctx.Done():
			return ctx.Err()
		case <-closed:
			return os.ErrClosed
		}
	}
}

// blob is an open Blob. A complete one reads its file directly: no lock, no
// allocation. A partial one first waits on its stream.
type blob struct {
	s    *Store
	e    *entry
	dgst v1.Hash
	f    *os.File
	size int64

	// partial blobs only
	st     *stream
	ctx    context.Context
	closed chan struct{}

	once sync.Once
}

var _ Blob = (*blob)(nil)

func (b *blob) ReadAt(p []byte, off int64) (int, error) {
	if b.st != nil && off >= 0 && off < b.size {
		end := min(b.size, off+int64(len(p)))
		// A read of the whole blob gets it verified or not at all.
		if err := b.wait(off, end, off == 0 && end == b.size); err != nil {
			return 0, err
		}
	}
	return b.f.ReadAt(p, off)
}

func (b *blob) wait(start, end int64, verified bool) error {
	switch err := b.st.wait(b.ctx, b.closed, start, end, verified); {
	case err == nil:
		return nil
	case err == os.ErrClosed || err == b.ctx.Err():
		return fmt.Errorf("blob %s: waiting for bytes %d-%d: %w", b.dgst, start, end-1, err)
	default:
		return err // the ingestion's error, which names the blob
	}
}

// Missing implements Blob.
func (b *blob) Missing(start, end int64) []Range {
	start, end = max(start, 0), min(end, b.size)
	if b.st == nil || start >= end {
		return nil
	}
	return b.st.missing(start, end)
}

func (b *blob) Size() int64 { return b.size }

func (b *blob) Complete() bool { return b.st == nil }

// ReadSeeker returns the file itself for a complete blob (all calls share its
// offset), and for a partial blob a reader whose Read returns the bytes
// readable now, waiting only when there is none.
func (b *blob) ReadSeeker() io.ReadSeeker {
	if b.st == nil {
		return b.f
	}
	return &partialReader{b: b}
}

func (b *blob) Close() error {
	err := os.ErrClosed
	b.once.Do(func() {
		if b.closed != nil {
			close(b.closed)
		}
		err = b.f.Close()
		b.s.release(b.e)
	})
	return err
}

// partialReader reads a partial blob sequentially, as it arrives. It hands
// out the blob's last byte only after the commit, so a reader that reads to
// the end never receives a whole unverified blob.
type partialReader struct {
	b   *blob
	off int64
}

func (r *partialReader) Read(p []byte) (int, error) {
	b := r.b
	if r.off >= b.size {
		return 0, io.EOF
	}
	if len(p) == 0 {
		return 0, nil
	}
	if err := b.wait(r.off, r.off+1, true); err != nil {
		return 0, err
	}
	if avail := b.st.runEnd(r.off, true) - r.off; int64(len(p)) > avail {
		p = p[:avail]
	}
	n, err := b.f.ReadAt(p, r.off)
	r.off += int64(n)
	if err == io.EOF && n == len(p) {
		err = nil // the next Read reports the end
	}
	return n, err
}

func (r *partialReader) Seek(offset int64, whence int) (int64, error) {
	switch whence {
	case io.SeekStart:
	case io.SeekCurrent:
		offset += r.off
	case io.SeekEnd:
		offset += r.b.size
	default:
		return 0, fmt.Errorf("blob %s: seek: invalid whence %d", r.b.dgst, whence)
	}
	if offset < 0 {
		return 0, fmt.Errorf("blob %s: seek to negative offset %d", r.b.dgst, offset)
	}
	r.off = offset
	return offset, nil
}
