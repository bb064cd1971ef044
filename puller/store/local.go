package store

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/thaw-dev/thaw/puller"
)

const (
	algorithm = "sha256"
	// tmpSuffix marks files written then renamed into place; New removes
	// leftovers of a crash.
	tmpSuffix = ".tmp"
	// persistEvery bounds how often an Open writes LastUsed to disk as the
	// file's modification time.
	persistEvery = time.Minute
)

// Store is the ContentStore on a local filesystem, in the layout described in
// the package documentation. One Store must own a root at a time.
//
// Open, Stat, List and the Admin calls take one store-wide mutex briefly (it
// covers the quick file operations that must stay atomic with the accounting:
// open, rename, unlink); reading an open complete blob takes no lock at all,
// and an ingestion's Write takes only its blob's lock.
type Store struct {
	root          string
	log           *slog.Logger
	quota         int64
	partialMaxAge time.Duration
	now           func() time.Time
	onRemove      func(v1.Hash)

	mu      sync.Mutex
	entries map[string]*entry // by hex digest
	pins    map[string]struct{}
	used    int64 // sum of entry sizes
}

var _ ContentStore = (*Store)(nil)

// entry is the accounting of one blob, complete or partial. Guarded by
// Store.mu, except st which has its own lock.
type entry struct {
	dgst      v1.Hash
	size      int64 // reserved against the quota, complete or not
	complete  bool
	lastUsed  time.Time
	persisted time.Time  // lastUsed last written to disk (complete blobs)
	refs      int        // open Blobs
	ing       *ingestion // the open ingestion, if any
	st        *stream    // partial blobs: shared with readers and ingestion
}

// New opens the store at root, creating the layout if needed, and rebuilds its
// accounting from the files there: complete blobs with their sizes and
// modification times (their LastUsed), partial blobs and pins. Files of
// interrupted writes are removed.
func New(root string, opts ...Option) (*Store, error) {
	o := options{
		log:           slog.New(slog.DiscardHandler),
		partialMaxAge: DefaultPartialMaxAge,
		now:           time.Now,
	}
	for _, opt := range opts {
		if err := opt(&o); err != nil {
			return nil, fmt.Errorf("store %s: %w", root, err)
		}
	}
	s := &Store{
		root:          root,
		log:           o.log,
		quota:         o.quota,
		partialMaxAge: o.partialMaxAge,
		now:           o.now,
		onRemove:      o.onRemove,
		entries:       make(map[string]*entry),
		pins:          make(map[string]struct{}),
	}
	for _, dir := range []string{s.blobsDir(), s.ingestDir(), s.pinsDir()} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, fmt.Errorf("store %s: create layout: %w", root, err)
		}
	}
	if err := s.load(); err != nil {
		return nil, fmt.Errorf("store %s: %w", root, err)
	}
	if s.quota > 0 && s.used > s.quota {
		s.log.Warn("store is over its quota; the next ingestions evict", "used", s.used, "quota", s.quota)
	}
	return s, nil
}

func (s *Store) blobsDir() string           { return filepath.Join(s.root, "blobs", algorithm) }
func (s *Store) ingestDir() string          { return filepath.Join(s.root, "ingest", algorithm) }
func (s *Store) pinsDir() string            { return filepath.Join(s.root, "pins", algorithm) }
func (s *Store) blobPath(hex string) string { return filepath.Join(s.blobsDir(), hex) }
func (s *Store) partialDir(hex string) string {
	return filepath.Join(s.ingestDir(), hex)
}
func (s *Store) partialData(hex string) string { return filepath.Join(s.partialDir(hex), "data") }
func (s *Store) partialSize(hex string) string { return filepath.Join(s.partialDir(hex), "size") }
func (s *Store) partialRanges(hex string) string {
	return filepath.Join(s.partialDir(hex), "ranges")
}

// load scans the layout. Reading directories and one lstat per blob keeps it
// fast for tens of thousands of blobs; the content is not re-hashed, since
// only verified blobs are ever renamed into blobs/.
func (s *Store) load() error {
	blobs, err := os.ReadDir(s.blobsDir())
	if err != nil {
		return fmt.Errorf("scan blobs: %w", err)
	}
	for _, de := range blobs {
		name := de.Name()
		path := filepath.Join(s.blobsDir(), name)
		if strings.HasSuffix(name, tmpSuffix) {
			s.removeLeftover(path)
			continue
		}
		if !validHex(name) || !de.Type().IsRegular() {
			s.log.Warn("ignoring unexpected file in the store", "path", path)
			continue
		}
		fi, err := de.Info()
		if err != nil {
			return fmt.Errorf("scan blobs: %w", err)
		}
		s.entries[name] = &entry{
			dgst:      v1.Hash{Algorithm: algorithm, Hex: name},
			size:      fi.Size(),
			complete:  true,
			lastUsed:  fi.ModTime(),
			persisted: fi.ModTime(),
		}
		s.used += fi.Size()
	}

	partials, err := os.ReadDir(s.ingestDir())
	if err != nil {
		return fmt.Errorf("scan partial blobs: %w", err)
	}
	for _, de := range partials {
		name := de.Name()
		path := filepath.Join(s.ingestDir(), name)
		switch {
		case strings.HasSuffix(name, tmpSuffix):
			s.removeLeftover(path)
		case !validHex(name) || !de.IsDir():
			s.log.Warn("ignoring unexpected file in the store", "path", path)
		default:
			if err := s.loadPartial(name); err != nil {
				return err
			}
		}
	}

	pins, err := os.ReadDir(s.pinsDir())
	if err != nil {
		return fmt.Errorf("scan pins: %w", err)
	}
	for _, de := range pins {
		name := de.Name()
		switch {
		case strings.HasSuffix(name, tmpSuffix):
			s.removeLeftover(filepath.Join(s.pinsDir(), name))
		case validHex(name):
			s.pins[name] = struct{}{}
		default:
			s.log.Warn("ignoring unexpected file in the store", "path", filepath.Join(s.pinsDir(), name))
		}
	}
	return nil
}

// loadPartial adds the partial blob in ingest/sha256/<hex>, or removes the
// directory when there is nothing worth resuming in it.
func (s *Store) loadPartial(hex string) error {
	dir := s.partialDir(hex)
	if e := s.entries[hex]; e != nil {
		// The crash came between the rename and the removal of the directory.
		return s.removePartialDir(hex, "the blob is complete")
	}
	s.removeLeftover(s.partialSize(hex) + tmpSuffix)
	raw, err := os.ReadFile(s.partialSize(hex))
	if errors.Is(err, os.ErrNotExist) {
		return s.removePartialDir(hex, "no size file")
	}
	if err != nil {
		return fmt.Errorf("scan partial blob %s: %w", dir, err)
	}
	size, err := parseSize(raw)
	if err != nil {
		return s.removePartialDir(hex, err.Error())
	}
	fi, err := os.Lstat(s.partialData(hex))
	if errors.Is(err, os.ErrNotExist) {
		return s.removePartialDir(hex, "no data file")
	}
	if err != nil {
		return fmt.Errorf("scan partial blob %s: %w", dir, err)
	}
	if !fi.Mode().IsRegular() || fi.Size() > size {
		return s.removePartialDir(hex, fmt.Sprintf("data is %d bytes, more than the size %d", fi.Size(), size))
	}
	present, err := s.loadRanges(hex, size, fi.Size())
	if err != nil {
		return s.removePartialDir(hex, err.Error())
	}
	s.entries[hex] = &entry{
		dgst:     v1.Hash{Algorithm: algorithm, Hex: hex},
		size:     size,
		lastUsed: fi.ModTime(),
		st:       newStream(size, present),
	}
	s.used += size
	return nil
}

// loadRanges reads which bytes of a partial blob are present. A partial
// written before ranges files existed holds its first dataLen bytes; it gets
// a ranges file now, so that later writes anywhere cannot be mistaken for
// that prefix. Ranges past the data file's end (which the write order rules
// out) are dropped.
func (s *Store) loadRanges(hex string, size, dataLen int64) (ranges, error) {
	path := s.partialRanges(hex)
	s.removeLeftover(path + tmpSuffix)
	raw, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		var present ranges
		present.add(Range{0, dataLen})
		if err := writeRanges(path, present); err != nil {
			return nil, fmt.Errorf("record the ranges of a partial blob: %w", err)
		}
		return present, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read ranges file: %w", err)
	}
	present, err := parseRanges(raw, size)
	if err != nil {
		return nil, err
	}
	if n := len(present); n > 0 && present[n-1].End > dataLen {
		s.log.Warn("partial blob records bytes past its data file's end; forgetting them", "digest", hex, "data", dataLen)
		var clipped ranges
		for _, r := range present {
			clipped.add(Range{r.Start, min(r.End, dataLen)})
		}
		present = clipped
	}
	return present, nil
}

func (s *Store) removePartialDir(hex, why string) error {
	dir := s.partialDir(hex)
	s.log.Info("removing partial blob", "path", dir, "reason", why)
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("remove partial blob: %w", err)
	}
	return nil
}

func (s *Store) removeLeftover(path string) {
	if err := os.Remove(path); err == nil {
		s.log.Info("removed leftover temporary file", "path", path)
	} else if !errors.Is(err, os.ErrNotExist) {
		s.log.Warn("cannot remove leftover temporary file", "path", path, "err", err)
	}
}

// parseSize parses the content of a partial blob's size file.
func parseSize(raw []byte) (int64, error) {
	size, err := strconv.ParseInt(strings.TrimSpace(string(raw)), 10, 64)
	if err != nil || size < 0 {
		return 0, fmt.Errorf("size file %q is not a byte count", raw)
	}
	return size, nil
}

// checkDigest accepts sha256 digests only: the layout and the verification
// know no other algorithm.
func checkDigest(d v1.Hash) error {
	if d.Algorithm != algorithm {
		return fmt.Errorf("digest %q: algorithm %q is not supported, only sha256: %w", d, d.Algorithm, ErrInvalidDigest)
	}
	if !validHex(d.Hex) {
		return fmt.Errorf("digest %q: want 64 lowercase hex characters after \"sha256:\": %w", d, ErrInvalidDigest)
	}
	return nil
}

func validHex(s string) bool {
	if len(s) != 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// Open implements Provider.
func (s *Store) Open(ctx context.Context, dgst v1.Hash) (Blob, error) {
	if err := checkDigest(dgst); err != nil {
		return nil, err
	}
	s.mu.Lock()
	e := s.entries[dgst.Hex]
	if e == nil {
		s.mu.Unlock()
		return nil, fmt.Errorf("blob %s: %w", dgst, puller.ErrNotFound)
	}
	path := s.blobPath(dgst.Hex)
	if !e.complete {
		path = s.partialData(dgst.Hex)
	}
	// Opened under the lock: a commit renames the file, and the reader must
	// get the inode the accounting speaks of.
	f, err := os.Open(path)
	if err != nil {
		s.mu.Unlock()
		if errors.Is(err, os.ErrNotExist) {
			s.log.Error("blob file vanished from under the store", "path", path)
			return nil, fmt.Errorf("blob %s: %w: %w", dgst, puller.ErrNotFound, err)
		}
		return nil, fmt.Errorf("blob %s: %w", dgst, err)
	}
	now := s.now()
	e.refs++
	e.lastUsed = now
	persist := false
	if d := now.Sub(e.persisted); e.complete && (d >= persistEvery || d < 0) {
		e.persisted, persist = now, true
	}
	b := &blob{s: s, e: e, dgst: dgst, f: f, size: e.size}
	if !e.complete {
		b.st, b.ctx, b.closed = e.st, ctx, make(chan struct{})
	}
	s.mu.Unlock()

	if persist {
		// LRU order survives a restart as the files' modification times. A
		// failure costs only that order.
		if err := os.Chtimes(path, now, now); err != nil {
			s.log.Debug("cannot record last use", "digest", dgst.String(), "err", err)
		}
	}
	return b, nil
}

func (s *Store) release(e *entry) {
	s.mu.Lock()
	e.refs--
	s.mu.Unlock()
}

// Stat implements Admin.
func (s *Store) Stat(ctx context.Context, dgst v1.Hash) (Info, error) {
	if err := checkDigest(dgst); err != nil {
		return Info{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	e := s.entries[dgst.Hex]
	if e == nil {
		return Info{}, fmt.Errorf("blob %s: %w", dgst, puller.ErrNotFound)
	}
	return s.infoLocked(e), nil
}

// List implements Admin. The blobs are sorted by digest.
func (s *Store) List(ctx context.Context) ([]Info, error) {
	s.mu.Lock()
	infos := make([]Info, 0, len(s.entries))
	for _, e := range s.entries {
		infos = append(infos, s.infoLocked(e))
	}
	s.mu.Unlock()
	slices.SortFunc(infos, func(a, b Info) int { return strings.Compare(a.Digest.Hex, b.Digest.Hex) })
	return infos, nil
}

func (s *Store) infoLocked(e *entry) Info {
	present := e.size
	if !e.complete {
		present = e.st.presentBytes()
	}
	_, pinned := s.pins[e.dgst.Hex]
	return Info{
		Digest:   e.dgst,
		Size:     e.size,
		Present:  present,
		Complete: e.complete,
		Pinned:   pinned,
		InUse:    e.refs > 0 || e.ing != nil,
		LastUsed: e.lastUsed,
	}
}

// Delete implements Admin. The pin of the digest, if any, stays.
func (s *Store) Delete(ctx context.Context, dgst v1.Hash) error {
	if err := checkDigest(dgst); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	e := s.entries[dgst.Hex]
	switch {
	case e == nil:
		return fmt.Errorf("delete blob %s: %w", dgst, puller.ErrNotFound)
	case e.ing != nil:
		return fmt.Errorf("delete blob %s: %w", dgst, ErrBusy)
	}
	if err := s.removeLocked(e, fmt.Errorf("blob %s was deleted: %w", dgst, puller.ErrNotFound)); err != nil {
		return fmt.Errorf("delete blob %s: %w", dgst, err)
	}
	return nil
}

// removeLocked deletes e's files and forgets it. Open readers keep their
// file; those of a partial blob waiting for more bytes get why.
func (s *Store) removeLocked(e *entry, why error) error {
	hex := e.dgst.Hex
	if e.complete {
		if err := os.Remove(s.blobPath(hex)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	} else {
		if err := os.RemoveAll(s.partialDir(hex)); err != nil {
			return err
		}
		e.st.fail(why)
	}
	if s.entries[hex] == e {
		delete(s.entries, hex)
		s.used -= e.size
	}
	if s.onRemove != nil {
		s.onRemove(e.dgst)
	}
	return nil
}

// Pin implements Admin.
func (s *Store) Pin(ctx context.Context, dgst v1.Hash) error {
	if err := checkDigest(dgst); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.pins[dgst.Hex]; ok {
		return nil
	}
	f, err := os.OpenFile(filepath.Join(s.pinsDir(), dgst.Hex), os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		return fmt.Errorf("pin %s: %w", dgst, diskFull(err))
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("pin %s: %w", dgst, diskFull(err))
	}
	s.pins[dgst.Hex] = struct{}{}
	return nil
}

// Unpin implements Admin. Unpinning a digest that is not pinned does nothing.
func (s *Store) Unpin(ctx context.Context, dgst v1.Hash) error {
	if err := checkDigest(dgst); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := os.Remove(filepath.Join(s.pinsDir(), dgst.Hex)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("unpin %s: %w", dgst, err)
	}
	delete(s.pins, dgst.Hex)
	return nil
}

// Usage implements Admin.
func (s *Store) Usage() (used, quota int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.used, s.quota
}

// Evict implements Admin. Stale partial blobs go first, whatever the target;
// then complete blobs, least recently used first.
func (s *Store) Evict(ctx context.Context, target int64) ([]Info, error) {
	if target < 0 {
		return nil, fmt.Errorf("evict: target %d is negative", target)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("evict: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	var stale []*entry
	for _, e := range s.entries {
		if !e.complete && s.evictableLocked(e) && now.Sub(e.lastUsed) >= s.partialMaxAge {
			stale = append(stale, e)
		}
	}
	sortLRU(stale)
	var evicted []Info
	for _, e := range stale {
		info := s.infoLocked(e)
		err := s.removeLocked(e, fmt.Errorf("partial blob %s was evicted after %s unused: %w",
			e.dgst, now.Sub(e.lastUsed).Round(time.Second), puller.ErrNotFound))
		if err != nil {
			return evicted, fmt.Errorf("evict partial blob %s: %w", e.dgst, err)
		}
		s.log.Info("evicted stale partial blob", "digest", e.dgst.String(), "present", info.Present, "last_used", info.LastUsed)
		evicted = append(evicted, info)
	}
	for _, e := range s.lruLocked() {
		if s.used <= target {
			break
		}
		info := s.infoLocked(e)
		if err := s.removeLocked(e, nil); err != nil {
			return evicted, fmt.Errorf("evict blob %s: %w", e.dgst, err)
		}
		s.log.Info("evicted blob", "digest", e.dgst.String(), "size", e.size, "last_used", info.LastUsed)
		evicted = append(evicted, info)
	}
	return evicted, nil
}

// evictableLocked: nobody reads, writes or pinned e.
func (s *Store) evictableLocked(e *entry) bool {
	_, pinned := s.pins[e.dgst.Hex]
	return !pinned && e.refs == 0 && e.ing == nil
}

// lruLocked returns the evictable complete blobs, least recently used first.
func (s *Store) lruLocked() []*entry {
	var lru []*entry
	for _, e := range s.entries {
		if e.complete && s.evictableLocked(e) {
			lru = append(lru, e)
		}
	}
	sortLRU(lru)
	return lru
}

func sortLRU(es []*entry) {
	slices.SortFunc(es, func(a, b *entry) int {
		if c := a.lastUsed.Compare(b.lastUsed); c != 0 {
			return c
		}
		return cmp.Compare(a.dgst.Hex, b.dgst.Hex)
	})
}

// reserveLocked makes room for need more bytes under the quota, evicting
// least recently used blobs, or changes nothing and returns an error wrapping
// puller.ErrQuota.
func (s *Store) reserveLocked(dgst v1.Hash, need int64) error {
	if s.quota == 0 || need <= 0 || s.used+need <= s.quota {
		return nil
	}
	lru := s.lruLocked()
	free, n := s.quota-s.used, 0
	for ; n < len(lru) && free < need; n++ {
		free += lru[n].size
	}
	if free < need {
		evictable := free - (s.quota - s.used)
		return fmt.Errorf("ingest %s: %d more bytes do not fit in the %d byte quota even after evicting every unpinned unused blob (%d bytes used, %d evictable): %w",
			dgst, need, s.quota, s.used, evictable, puller.ErrQuota)
	}
	for _, e := range lru[:n] {
		lastUsed := e.lastUsed
		if err := s.removeLocked(e, nil); err != nil {
			return fmt.Errorf("ingest %s: evict %s: %w", dgst, e.dgst, err)
		}
		s.log.Info("evicted blob", "digest", e.dgst.String(), "size", e.size, "last_used", lastUsed, "for", dgst.String())
	}
	return nil
}

// diskFull wraps err with puller.ErrQuota when the disk or the user's disk
// quota is full.
func diskFull(err error) error {
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		return fmt.Errorf("disk full, free space or lower the store quota: %w: %w", puller.ErrQuota, err)
	}
	return err
}

// syncDir makes a directory's entries durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}
