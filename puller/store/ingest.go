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
	"slices"
	"strconv"
	"sync"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/thaw-dev/thaw/puller"
)

// Ingest implements Ingester. The bytes of a resumed partial blob are hashed
// at the commit.
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
	if w.cursor > 0 {
		s.log.Debug("resuming partial blob", "digest", dgst.String(), "offset", w.cursor, "present", w.st.presentBytes(), "size", size)
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
		e = &entry{dgst: dgst, size: size, lastUsed: s.now(), st: newStream(size, nil)}
		s.entries[hex] = e
		s.used += size
	}

	f, err := os.OpenFile(s.partialData(hex), os.O_RDWR, 0)
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
	w := &ingestion{s: s, e: e, st: e.st, f: f, h: sha256.New(), dgst: dgst, size: size, cursor: e.st.runEnd(0, false)}
	e.ing = w
	e.st.resume()
	return w, nil
}

// createPartial creates ingest/sha256/<hex> with its size file, an empty
// data file and an empty ranges file.
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
	if err == nil {
		err = writeRanges(s.partialRanges(hex), nil)
	}
	if err != nil {
		if rerr := os.RemoveAll(dir); rerr != nil {
			s.log.Warn("cannot clean up partial blob", "path", dir, "err", rerr)
		}
		return fmt.Errorf("create partial blob: %w", err)
	}
	return nil
}

// persistBytes is how many bytes an ingestion writes between two updates of
// the ranges file (each costs two fsyncs, one of the data written since). A
// crash loses at most the record of these bytes, which are then fetched
// again.
const persistBytes = 32 << 20

// ingestion is the Ingestion of a Store. It shares the entry (under Store.mu)
// and the stream with readers.
type ingestion struct {
	s    *Store
	e    *entry
	st   *stream
	dgst v1.Hash
	size int64

	// life: WriteAt holds it shared while it uses f; Commit and Abort hold it
	// exclusively, so they wait for the writes in flight.
	life  sync.RWMutex
	f     *os.File // data, read-write; nil once ended
	ended bool

	mu       sync.Mutex
	h        hash.Hash // the bytes [0, hashed)
	hashed   int64
	cursor   int64   // Write's offset
	writing  []Range // being written by a WriteAt now
	unsynced int64   // bytes written since the ranges file was updated

	persistMu sync.Mutex // one ranges file update at a time
}

var _ Ingestion = (*ingestion)(nil)

func (w *ingestion) Offset() int64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.cursor
}

func (w *ingestion) Missing(start, end int64) []Range {
	start, end = max(start, 0), min(end, w.size)
	if start >= end {
		return nil
	}
	return w.st.missing(start, end)
}

func (w *ingestion) Write(p []byte) (int, error) {
	off := w.Offset()
	if int64(len(p)) > w.size-off {
		return 0, fmt.Errorf("ingest %s: %d bytes at offset %d overrun the announced size %d: %w",
			w.dgst, len(p), off, w.size, puller.ErrSizeMismatch)
	}
	n, err := w.WriteAt(p, off)
	w.mu.Lock()
	w.cursor = off + int64(n)
	w.mu.Unlock()
	return n, err
}

func (w *ingestion) WriteAt(p []byte, off int64) (int, error) {
	w.life.RLock()
	defer w.life.RUnlock()
	if w.ended {
		return 0, w.endedErr()
	}
	end := off + int64(len(p))
	if off < 0 || end > w.size || end < off {
		return 0, fmt.Errorf("ingest %s: %d bytes at offset %d do not fit in the announced size %d: %w",
			w.dgst, len(p), off, w.size, puller.ErrSizeMismatch)
	}
	// Bytes present or being written stay as they are: every byte is
	// written once, so the hash fed on the way is the hash of the file.
	w.mu.Lock()
	todo := Subtract(w.st.missing(off, end), w.writing)
	w.writing = append(w.writing, todo...)
	w.mu.Unlock()

	var werr error
	done := len(p)
	for _, seg := range todo {
		var n int
		var err error
		if werr == nil {
			n, err = w.f.WriteAt(p[seg.Start-off:seg.End-off], seg.Start)
		}
		w.mu.Lock()
		w.writing = slices.DeleteFunc(w.writing, func(r Range) bool { return r == seg })
		if n > 0 && seg.Start == w.hashed {
			w.h.Write(p[seg.Start-off : seg.Start-off+int64(n)])
			w.hashed += int64(n)
		}
		w.unsynced += int64(n)
		w.mu.Unlock()
		if n > 0 {
			// Bytes the kernel took are in the file: keep them, short write or not.
			w.st.add(Range{seg.Start, seg.Start + int64(n)})
		}
		if err != nil {
			done = int(seg.Start-off) + n
			werr = fmt.Errorf("ingest %s: write at offset %d: %w", w.dgst, seg.Start+int64(n), diskFull(err))
		}
	}
	if werr != nil {
		return done, werr
	}
	w.mu.Lock()
	persist := w.unsynced >= persistBytes
	w.mu.Unlock()
	if persist {
		if err := w.persist(); err != nil {
			w.s.log.Warn("cannot record the ranges of a partial blob; a restart fetches them again", "digest", w.dgst.String(), "err", err)
		}
	}
	return len(p), nil
}

// persist makes the data durable, then records its present ranges, so the
// ranges file never names a byte that a crash could lose. The caller holds
// life (shared or not) so that f stays open.
func (w *ingestion) persist() error {
	w.persistMu.Lock()
	defer w.persistMu.Unlock()
	w.mu.Lock()
	unsynced := w.unsynced
	w.unsynced = 0
	w.mu.Unlock()
	present := w.st.snapshot()
	err := w.f.Sync()
	if err == nil {
		err = writeRanges(w.s.partialRanges(w.dgst.Hex), present)
	}
	if err != nil {
		w.mu.Lock()
		w.unsynced += unsynced
		w.mu.Unlock()
		return fmt.Errorf("record the ranges of partial blob %s: %w", w.dgst, diskFull(err))
	}
	return nil
}

// writeRanges replaces a ranges file durably.
func writeRanges(path string, present ranges) error {
	tmp := path + tmpSuffix
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	_, err = f.Write(present.marshal())
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
	}
	return err
}

func (w *ingestion) Commit(ctx context.Context) error {
	w.life.Lock()
	defer w.life.Unlock()
	if w.ended {
		return w.endedErr()
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("commit %s: %w", w.dgst, err)
	}
	if present := w.st.presentBytes(); present != w.size {
		err := fmt.Errorf("commit %s: %d of %d bytes written: %w", w.dgst, present, w.size, puller.ErrSizeMismatch)
		w.end(err, true)
		return err
	}
	if err := w.hashRest(ctx); err != nil {
		err = fmt.Errorf("commit %s: hash the bytes: %w", w.dgst, err)
		w.end(err, false)
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

// hashRest feeds the bytes from hashed to the end, read back from the data
// file, to the hash. Bytes are never rewritten once present, so this is the
// hash of what the file holds.
func (w *ingestion) hashRest(ctx context.Context) error {
	if w.hashed == w.size {
		return nil
	}
	buf := make([]byte, 1<<20)
	r := io.NewSectionReader(w.f, w.hashed, w.size-w.hashed)
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		n, err := r.Read(buf)
		w.h.Write(buf[:n])
		w.hashed += int64(n)
		if errors.Is(err, io.EOF) {
			if w.hashed != w.size {
				return fmt.Errorf("data file ends at %d of %d bytes: %w", w.hashed, w.size, puller.ErrSizeMismatch)
			}
			return nil
		}
		if err != nil {
			return err
		}
	}
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
	w.life.Lock()
	defer w.life.Unlock()
	if w.ended {
		return
	}
	if err == nil {
		err = fmt.Errorf("ingest %s: aborted", w.dgst)
	}
	w.end(err, discard)
}

// end closes the ingestion (the caller holds life): the partial stays for a
// later resume, its ranges recorded and its waiting readers getting why, or
// is removed with why for all its readers.
func (w *ingestion) end(why error, discard bool) {
	w.ended = true
	if w.f != nil {
		if !discard {
			if err := w.persist(); err != nil {
				w.s.log.Warn("cannot record the ranges of a partial blob; a restart fetches them again", "digest", w.dgst.String(), "err", err)
			}
		}
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

func (w *ingestion) endedErr() error {
	return fmt.Errorf("ingest %s: the ingestion has ended: %w", w.dgst, os.ErrClosed)
}
