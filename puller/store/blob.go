package store

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// stream is what the readers of a partial blob share with its ingestion: how
// many bytes they may read, and a broadcast on every change. It outlives
// ingestions: readers of a partial left on disk wait on it until a later
// ingestion writes, and it stays valid for them after the commit.
type stream struct {
	size    int64
	written atomic.Int64 // bytes in the data file
	visible atomic.Int64 // bytes readers may read: at most size-1 until done
	done    atomic.Bool  // committed: all size bytes are readable

	mu     sync.Mutex
	wake   *wakeup
	failed error // the partial is gone for good (deleted, discarded, refused)
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

func newStream(size, written int64) *stream {
	s := &stream{size: size, wake: &wakeup{ch: make(chan struct{})}}
	s.written.Store(written)
	s.visible.Store(withhold(written, size))
	return s
}

// withhold is what readers may see of written bytes before the commit: all
// but the last byte, so no reader ever holds a whole unverified blob.
func withhold(written, size int64) int64 {
	return max(min(written, size-1), 0)
}

// ready reports whether the first need bytes (need <= size) are readable.
// Reaching the end needs the commit, even for an empty blob.
func (s *stream) ready(need int64) bool {
	if need < s.size {
		return s.visible.Load() >= need
	}
	return s.done.Load()
}

// available is how many bytes are readable.
func (s *stream) available() int64 {
	if s.done.Load() {
		return s.size
	}
	return s.visible.Load()
}

// advance records that the data file holds n bytes.
func (s *stream) advance(n int64) {
	s.mu.Lock()
	s.written.Store(n)
	if v := withhold(n, s.size); v > s.visible.Load() {
		s.visible.Store(v)
		s.broadcastLocked(nil)
	}
	s.mu.Unlock()
}

// commit releases every byte.
func (s *stream) commit() {
	s.mu.Lock()
	s.written.Store(s.size)
	s.visible.Store(s.size)
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
func (s *stream) fail(err error) {
	s.mu.Lock()
	if s.failed == nil {
		s.failed = err
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

// wait blocks until the first need bytes are readable, the stream fails or
// is interrupted, ctx is done or closed is closed.
func (s *stream) wait(ctx context.Context, closed <-chan struct{}, need int64) error {
	for {
		if s.ready(need) {
			return nil
		}
		s.mu.Lock()
		if s.ready(need) {
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
	if b.st != nil && off >= 0 {
		need := b.size
		if off < b.size && int64(len(p)) < b.size-off {
			need = off + int64(len(p))
		}
		if err := b.wait(need); err != nil {
			return 0, err
		}
	}
	return b.f.ReadAt(p, off)
}

func (b *blob) wait(need int64) error {
	switch err := b.st.wait(b.ctx, b.closed, need); {
	case err == nil:
		return nil
	case err == os.ErrClosed || err == b.ctx.Err():
		return fmt.Errorf("blob %s: waiting for its first %d bytes: %w", b.dgst, need, err)
	default:
		return err // the ingestion's error, which names the blob
	}
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

// partialReader reads a partial blob sequentially, as it arrives.
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
	if err := b.wait(r.off + 1); err != nil {
		return 0, err
	}
	if avail := b.st.available() - r.off; int64(len(p)) > avail {
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
