package store

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"strconv"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/thaw-dev/thaw/puller"
)

// Ingest implements Ingester. Resuming a partial blob hashes the bytes already
// on disk before it returns; ctx bounds that.
func (s *Store) Ingest(ctx context.Context, dgst v1.Hash, size int64) (Ingestion, error) {
	if err := checkDigest(dgst); err != nil {
		return nil, err
	}
	if size < 0 {
		return nil, fmt.Errorf("ingest %s: negative size %d", dgst, size)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("ingest %s: %w", dgst, err)
	}
	s.mu.Lock()
	w, err := s.startLocked(dgst, size)
	s.mu.Unlock()
	if err != nil {
		return nil, err
	}
	if w.offset > 0 {
		if err := w.hashPrefix(ctx); err != nil {
			err = fmt.Errorf("ingest %s: hash the %d bytes present: %w", dgst, w.offset, err)
			w.end(err, false)
			return nil, err
		}
		s.log.Debug("resuming partial blob", "digest", dgst.String(), "offset", w.offset, "size", size)
	}
	return w, nil
}

// startLocked reserves the quota, creates or reuses the partial blob and
// registers the ingestion. The files are created under the lock so that an
// Open never sees an entry without its data file.
func (s *Store) startLocked(dgst v1.Hash, size int64) (*ingestion, error) {
	hex := dgst.Hex
	e := s.entries[hex]
	need := size
	if e != nil {
		switch {
		case e.complete:
			return nil, fmt.Errorf("ingest %s: %w", dgst, ErrExists)
		case e.ing != nil:
			return nil, fmt.Errorf("ingest %s: %w", dgst, ErrBusy)
		case e.size == size:
			need = 0
		default:
			need = size - e.size
		}
	}
	if err := s.reserveLocked(dgst, need); err != nil {
		return nil, err
	}
	if e != nil && e.size != size {
		s.log.Info("discarding partial blob announced with another size", "digest", dgst.String(), "old_size", e.size, "size", size)
		why := fmt.Errorf("blob %s: partial of %d bytes discarded for an ingestion of %d bytes: %w", dgst, e.size, size, puller.ErrSizeMismatch)
		if err := s.removeLocked(e, why); err != nil {
			return nil, fmt.Errorf("ingest %s: discard partial blob: %w", dgst, err)
		}
		e = nil
	}
	if e == nil {
		if err := s.createPartial(hex, size); err != nil {
			return nil, fmt.Errorf("ingest %s: %w", dgst, diskFull(err))
		}
		e = &entry{dgst: dgst, size: size, lastUsed: s.now(), st: newStream(size, 0)}
		s.entries[hex] = e
		s.used += size
	}

	f, err := os.OpenFile(s.partialData(hex), os.O_RDWR|os.O_APPEND, 0)
	if err != nil {
		return nil, fmt.Errorf("ingest %s: %w", dgst, err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("ingest %s: %w", dgst, err)
	}
	if fi.Size() > size {
		f.Close()
		err := fmt.Errorf("ingest %s: partial blob holds %d bytes, more than its size %d; it was removed, retry: %w", dgst, fi.Size(), size, puller.ErrSizeMismatch)
		if rerr := s.removeLocked(e, err); rerr != nil {
			return nil, fmt.Errorf("%w (and removing it failed: %v)", err, rerr)
		}
		return nil, err
	}
	w := &ingestion{s: s, e: e, st: e.st, f: f, h: sha256.New(), dgst: dgst, size: size, offset: fi.Size()}
	e.ing = w
	e.st.resume()
	e.st.advance(w.offset)
	return w, nil
}

// createPartial creates ingest/sha256/<hex> with its size file and an empty
// data file.
func (s *Store) createPartial(hex string, size int64) error {
	dir := s.partialDir(hex)
	err := os.MkdirAll(dir, 0o755)
	if err == nil {
		tmp := s.partialSize(hex) + tmpSuffix
		err = os.WriteFile(tmp, strconv.AppendInt(nil, size, 10), 0o644)
		if err == nil {
			err = os.Rename(tmp, s.partialSize(hex))
		}
	}
	if err == nil {
		var f *os.File
		f, err = os.OpenFile(s.partialData(hex), os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o644)
		if err == nil {
			err = f.Close()
		}
	}
	if err != nil {
		if rerr := os.RemoveAll(dir); rerr != nil {
			s.log.Warn("cannot clean up partial blob", "path", dir, "err", rerr)
		}
		return fmt.Errorf("create partial blob: %w", err)
	}
	return nil
}

// ingestion is the Ingestion of a Store. Its own fields belong to the one
// goroutine using it; it shares the entry (under Store.mu) and the stream.
type ingestion struct {
	s      *Store
	e      *entry
	st     *stream
	f      *os.File // data, opened for appending
	h      hash.Hash
	dgst   v1.Hash
	size   int64
	offset int64

	ended  bool
	broken error // the data file may not match offset: only Abort helps
}

var _ Ingestion = (*ingestion)(nil)

func (w *ingestion) Offset() int64 { return w.offset }

func (w *ingestion) Write(p []byte) (int, error) {
	if w.ended {
		return 0, w.endedErr()
	}
	if w.broken != nil {
		return 0, w.broken
	}
	if int64(len(p)) > w.size-w.offset {
		return 0, fmt.Errorf("ingest %s: %d bytes at offset %d overrun the announced size %d: %w",
			w.dgst, len(p), w.offset, w.size, puller.ErrSizeMismatch)
	}
	n, err := w.f.Write(p)
	if n > 0 {
		// Bytes the kernel took are in the file: keep them, short write or not.
		w.h.Write(p[:n])
		w.offset += int64(n)
		w.st.advance(w.offset)
	}
	if err != nil {
		err = fmt.Errorf("ingest %s: write at offset %d: %w", w.dgst, w.offset, diskFull(err))
		w.repair(err)
		return n, err
	}
	return n, nil
}

// repair cuts the data file back to offset if a failed write left more, so
// that a resume (which trusts the file's length) hashes the right bytes.
func (w *ingestion) repair(cause error) {
	fi, err := w.f.Stat()
	if err == nil && fi.Size() == w.offset {
		return
	}
	if err == nil {
		err = w.f.Truncate(w.offset)
	}
	if err != nil {
		w.broken = fmt.Errorf("ingest %s: after %v, the data file could not be cut back to %d bytes (%w); abort the ingestion with discard",
			w.dgst, cause, w.offset, err)
		w.s.log.Error("partial blob left inconsistent", "digest", w.dgst.String(), "err", w.broken)
	}
}

func (w *ingestion) Commit(ctx context.Context) error {
	if w.ended {
		return w.endedErr()
	}
	if w.broken != nil {
		return w.broken
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("commit %s: %w", w.dgst, err)
	}
	if w.offset != w.size {
		err := fmt.Errorf("commit %s: %d of %d bytes written: %w", w.dgst, w.offset, w.size, puller.ErrSizeMismatch)
		w.end(err, true)
		return err
	}
	var sum [sha256.Size]byte
	if got := hex.EncodeToString(w.h.Sum(sum[:0])); got != w.dgst.Hex {
		err := fmt.Errorf("commit %s: the bytes hash to sha256:%s: %w", w.dgst, got, puller.ErrDigestMismatch)
		w.end(err, true)
		return err
	}

	s, hex := w.s, w.dgst.Hex
	now := s.now()
	if err := w.seal(now); err != nil {
		err = fmt.Errorf("commit %s: %w", w.dgst, diskFull(err))
		w.end(err, false)
		return err
	}

	s.mu.Lock()
	if err := os.Rename(s.partialData(hex), s.blobPath(hex)); err != nil {
		s.mu.Unlock()
		err = fmt.Errorf("commit %s: %w", w.dgst, err)
		w.end(err, false)
		return err
	}
	e := w.e
	e.complete, e.ing, e.st = true, nil, nil
	e.lastUsed, e.persisted = now, now
	w.st.commit()
	w.ended = true
	rmErr := os.RemoveAll(s.partialDir(hex))
	s.mu.Unlock()

	if rmErr != nil {
		s.log.Warn("cannot remove the directory of a committed blob; the next start does", "digest", w.dgst.String(), "err", rmErr)
	}
	if err := syncDir(s.blobsDir()); err != nil {
		return fmt.Errorf("commit %s: the blob is in place but its directory could not be synced: %w", w.dgst, err)
	}
	return nil
}

// seal makes the verified data file read-only and durable, with now as its
// modification time (its LastUsed after a restart), and closes it.
func (w *ingestion) seal(now time.Time) error {
	f := w.f
	w.f = nil
	err := f.Chmod(0o444)
	if err == nil {
		err = os.Chtimes(f.Name(), now, now)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

func (w *ingestion) Abort(err error, discard bool) {
	if w.ended {
		return
	}
	if err == nil {
		err = fmt.Errorf("ingest %s: aborted", w.dgst)
	}
	w.end(err, discard)
}

// end closes the ingestion: the partial stays for a later resume, its waiting
// readers getting why, or is removed with why for all its readers.
func (w *ingestion) end(why error, discard bool) {
	w.ended = true
	if w.f != nil {
		if err := w.f.Close(); err != nil {
			w.s.log.Warn("closing partial blob", "digest", w.dgst.String(), "err", err)
		}
		w.f = nil
	}
	s, e := w.s, w.e
	s.mu.Lock()
	defer s.mu.Unlock()
	e.ing = nil
	e.lastUsed = s.now()
	if discard {
		err := s.removeLocked(e, why)
		if err == nil {
			return
		}
		s.log.Error("cannot remove partial blob", "digest", w.dgst.String(), "err", err)
	}
	e.st.interrupt(why)
}

// hashPrefix feeds the bytes already present to the hash.
func (w *ingestion) hashPrefix(ctx context.Context) error {
	buf := make([]byte, 1<<20)
	r := io.NewSectionReader(w.f, 0, w.offset)
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		n, err := r.Read(buf)
		w.h.Write(buf[:n])
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

func (w *ingestion) endedErr() error {
	return fmt.Errorf("ingest %s: the ingestion has ended: %w", w.dgst, os.ErrClosed)
}
