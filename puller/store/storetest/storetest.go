package storetest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"testing/synctest"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/thaw-dev/thaw/puller"
	"github.com/thaw-dev/thaw/puller/store"
)

// NewStore returns an empty store with the given quota in bytes (0: none).
// It is called inside synctest bubbles for the tests of blocking reads, so it
// must not start goroutines that outlive t.
type NewStore func(t *testing.T, quota int64) store.ContentStore

// Random returns size pseudo-random bytes, the same for the same seed, and
// their digest.
func Random(seed uint64, size int) ([]byte, v1.Hash) {
	r := rand.New(rand.NewPCG(seed, uint64(size)))
	data := make([]byte, size)
	for i := range data {
		data[i] = byte(r.Uint32())
	}
	return data, Digest(data)
}

// Digest is the sha256 digest of data.
func Digest(data []byte) v1.Hash {
	sum := sha256.Sum256(data)
	return v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(sum[:])}
}

// Put ingests and commits data, failing t on any error.
func Put(t testing.TB, s store.Ingester, data []byte) v1.Hash {
	t.Helper()
	dgst := Digest(data)
	ing, err := s.Ingest(context.Background(), dgst, int64(len(data)))
	if err != nil {
		t.Fatalf("Ingest(%s): %v", dgst, err)
	}
	defer ing.Abort(nil, true)
	if _, err := ing.Write(data[ing.Offset():]); err != nil {
		t.Fatalf("Write(%s): %v", dgst, err)
	}
	if err := ing.Commit(context.Background()); err != nil {
		t.Fatalf("Commit(%s): %v", dgst, err)
	}
	return dgst
}

// ReadAll reads the whole blob through ReadAt, failing t on any error.
func ReadAll(t testing.TB, b store.Blob) []byte {
	t.Helper()
	got := make([]byte, b.Size())
	if n, err := b.ReadAt(got, 0); n != len(got) || err != nil && err != io.EOF {
		t.Fatalf("ReadAt(all %d bytes) = %d, %v", len(got), n, err)
	}
	return got
}

// Run runs the conformance suite against the stores newStore returns.
func Run(t *testing.T, newStore NewStore) {
	tests := []struct {
		name string
		test func(t *testing.T, newStore NewStore)
	}{
		{"InvalidDigest", testInvalidDigest},
		{"NotFound", testNotFound},
		{"IngestCommitRead", testIngestCommitRead},
		{"IngestExists", testIngestExists},
		{"IngestBusy", testIngestBusy},
		{"AbortKeepsPartial", testAbortKeepsPartial},
		{"AbortDiscards", testAbortDiscards},
		{"EndedIngestion", testEndedIngestion},
		{"SizeChangeRestarts", testSizeChangeRestarts},
		{"DigestMismatch", testDigestMismatch},
		{"ShortCommit", testShortCommit},
		{"Overrun", testOverrun},
		{"StreamingReadAt", testStreamingReadAt},
		{"StreamingReadSeeker", testStreamingReadSeeker},
		{"LastByteWithheld", testLastByteWithheld},
		{"SparseWriteAt", testSparseWriteAt},
		{"SparseGapCommit", testSparseGapCommit},
		{"SparseMismatch", testSparseMismatch},
		{"WriteAtKeepsPresent", testWriteAtKeepsPresent},
		{"WriteAtBounds", testWriteAtBounds},
		{"ConcurrentWriteAt", testConcurrentWriteAt},
		{"SparseReadSeeker", testSparseReadSeeker},
		{"WaitingReaderGetsMismatch", testWaitingReaderGetsMismatch},
		{"WaitingReaderGetsAbortError", testWaitingReaderGetsAbortError},
		{"WaitingReaderContextDone", testWaitingReaderContextDone},
		{"PartialOnDiskReadable", testPartialOnDiskReadable},
		{"DeleteWhileOpen", testDeleteWhileOpen},
		{"DeletePartial", testDeletePartial},
		{"Pins", testPins},
		{"ListAndUsage", testListAndUsage},
		{"Evict", testEvict},
		{"QuotaEvicts", testQuotaEvicts},
		{"QuotaImpossible", testQuotaImpossible},
		{"Concurrent", testConcurrent},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { tt.test(t, newStore) })
	}
}

func testInvalidDigest(t *testing.T, newStore NewStore) {
	s := newStore(t, 0)
	ctx := t.Context()
	good := strings.Repeat("ab", 32)
	digests := []struct {
		name string
		dgst v1.Hash
	}{
		{"sha512", v1.Hash{Algorithm: "sha512", Hex: strings.Repeat("ab", 64)}},
		{"md5", v1.Hash{Algorithm: "md5", Hex: good[:32]}},
		{"no algorithm", v1.Hash{Hex: good}},
		{"uppercase algorithm", v1.Hash{Algorithm: "SHA256", Hex: good}},
		{"short hex", v1.Hash{Algorithm: "sha256", Hex: good[:63]}},
		{"long hex", v1.Hash{Algorithm: "sha256", Hex: good + "a"}},
		{"uppercase hex", v1.Hash{Algorithm: "sha256", Hex: strings.ToUpper(good)}},
		{"non-hex", v1.Hash{Algorithm: "sha256", Hex: good[:63] + "g"}},
		{"path", v1.Hash{Algorithm: "sha256", Hex: "../../" + good[6:]}},
		{"empty", v1.Hash{}},
	}
	for _, d := range digests {
		t.Run(d.name, func(t *testing.T) {
			ops := map[string]func() error{
				"Open":   func() error { _, err := s.Open(ctx, d.dgst); return err },
				"Ingest": func() error { _, err := s.Ingest(ctx, d.dgst, 1); return err },
				"Stat":   func() error { _, err := s.Stat(ctx, d.dgst); return err },
				"Delete": func() error { return s.Delete(ctx, d.dgst) },
				"Pin":    func() error { return s.Pin(ctx, d.dgst) },
				"Unpin":  func() error { return s.Unpin(ctx, d.dgst) },
			}
			for op, f := range ops {
				if err := f(); !errors.Is(err, store.ErrInvalidDigest) {
					t.Errorf("%s(%q) = %v, want ErrInvalidDigest", op, d.dgst, err)
				}
			}
		})
	}
	if infos, _ := s.List(ctx); len(infos) != 0 {
		t.Errorf("List after invalid calls = %v, want empty", infos)
	}
}

func testNotFound(t *testing.T, newStore NewStore) {
	s := newStore(t, 0)
	ctx := t.Context()
	_, dgst := Random(1, 10)
	if _, err := s.Open(ctx, dgst); !errors.Is(err, puller.ErrNotFound) {
		t.Errorf("Open(absent) = %v, want ErrNotFound", err)
	}
	if _, err := s.Stat(ctx, dgst); !errors.Is(err, puller.ErrNotFound) {
		t.Errorf("Stat(absent) = %v, want ErrNotFound", err)
	}
	if err := s.Delete(ctx, dgst); !errors.Is(err, puller.ErrNotFound) {
		t.Errorf("Delete(absent) = %v, want ErrNotFound", err)
	}
}

func testIngestCommitRead(t *testing.T, newStore NewStore) {
	for _, size := range []int{0, 1, 2, 1000, 300 << 10} {
		t.Run(strconv.Itoa(size), func(t *testing.T) {
			s := newStore(t, 0)
			ctx := t.Context()
			data, dgst := Random(2, size)
			ing, err := s.Ingest(ctx, dgst, int64(size))
			if err != nil {
				t.Fatalf("Ingest: %v", err)
			}
			if ing.Offset() != 0 {
				t.Fatalf("Offset = %d, want 0", ing.Offset())
			}
			for off := 0; off < size; off += 7 << 10 {
				chunk := data[off:min(off+7<<10, size)]
				if n, err := ing.Write(chunk); n != len(chunk) || err != nil {
					t.Fatalf("Write at %d = %d, %v", off, n, err)
				}
			}
			if ing.Offset() != int64(size) {
				t.Fatalf("Offset = %d, want %d", ing.Offset(), size)
			}
			if err := ing.Commit(ctx); err != nil {
				t.Fatalf("Commit: %v", err)
			}
			ing.Abort(errors.New("after commit"), true) // no effect

			info, err := s.Stat(ctx, dgst)
			if err != nil {
				t.Fatalf("Stat: %v", err)
			}
			if !info.Complete || info.Size != int64(size) || info.Present != int64(size) || info.Digest != dgst || info.InUse || info.Pinned {
				t.Errorf("Stat = %+v, want complete, unused, size %d", info, size)
			}
			if used, _ := s.Usage(); used != int64(size) {
				t.Errorf("used = %d, want %d", used, size)
			}

			b, err := s.Open(ctx, dgst)
			if err != nil {
				t.Fatalf("Open: %v", err)
			}
			defer b.Close()
			if !b.Complete() || b.Size() != int64(size) {
				t.Errorf("Complete, Size = %v, %d, want true, %d", b.Complete(), b.Size(), size)
			}
			if info, _ := s.Stat(ctx, dgst); !info.InUse {
				t.Errorf("Stat of an open blob: InUse false")
			}
			if got := ReadAll(t, b); !bytes.Equal(got, data) {
				t.Errorf("ReadAt(all) differs from what was written")
			}
			checkReadAt(t, b, data)
			got, err := io.ReadAll(b.ReadSeeker())
			if err != nil || !bytes.Equal(got, data) {
				t.Errorf("ReadSeeker: %d bytes, %v; want the %d written", len(got), err, size)
			}
			if size > 1 {
				rs := b.ReadSeeker()
				if _, err := rs.Seek(int64(size/2), io.SeekStart); err != nil {
					t.Fatalf("Seek: %v", err)
				}
				got, err := io.ReadAll(rs)
				if err != nil || !bytes.Equal(got, data[size/2:]) {
					t.Errorf("ReadSeeker after Seek(%d): %d bytes, %v", size/2, len(got), err)
				}
			}
		})
	}
}

// checkReadAt checks io.ReaderAt semantics at the edges.
func checkReadAt(t *testing.T, b store.Blob, data []byte) {
	t.Helper()
	size := len(data)
	if size >= 3 {
		p := make([]byte, size/3)
		if n, err := b.ReadAt(p, int64(size/3)); n != len(p) || err != nil && err != io.EOF || !bytes.Equal(p, data[size/3:size/3+len(p)]) {
			t.Errorf("ReadAt(middle) = %d, %v", n, err)
		}
	}
	if size >= 1 {
		p := make([]byte, 10)
		n, err := b.ReadAt(p, int64(size-1))
		if n != 1 || err != io.EOF || p[0] != data[size-1] {
			t.Errorf("ReadAt(10 bytes at size-1) = %d, %v; want 1, io.EOF", n, err)
		}
	}
	p := make([]byte, 1)
	if n, err := b.ReadAt(p, int64(size)); n != 0 || err != io.EOF {
		t.Errorf("ReadAt(at size) = %d, %v; want 0, io.EOF", n, err)
	}
}

func testIngestExists(t *testing.T, newStore NewStore) {
	s := newStore(t, 0)
	data, _ := Random(3, 100)
	dgst := Put(t, s, data)
	if _, err := s.Ingest(t.Context(), dgst, 100); !errors.Is(err, store.ErrExists) {
		t.Errorf("Ingest(complete) = %v, want ErrExists", err)
	}
}

func testIngestBusy(t *testing.T, newStore NewStore) {
	s := newStore(t, 0)
	ctx := t.Context()
	_, dgst := Random(4, 100)
	ing, err := s.Ingest(ctx, dgst, 100)
	if err != nil {
		t.Fatalf("Ingest: %v", err)
	}
	defer ing.Abort(nil, true)
	if _, err := s.Ingest(ctx, dgst, 100); !errors.Is(err, store.ErrBusy) {
		t.Errorf("second Ingest = %v, want ErrBusy", err)
	}
	if err := s.Delete(ctx, dgst); !errors.Is(err, store.ErrBusy) {
		t.Errorf("Delete(ingesting) = %v, want ErrBusy", err)
	}
	info, err := s.Stat(ctx, dgst)
	if err != nil {
		t.Fatalf("Stat: %v", err)
	}
	if info.Complete || !info.InUse || info.Size != 100 || info.Present != 0 {
		t.Errorf("Stat = %+v, want partial, in use, size 100, nothing present", info)
	}
}

func testAbortKeepsPartial(t *testing.T, newStore NewStore) {
	s := newStore(t, 0)
	ctx := t.Context()
	data, dgst := Random(5, 1000)
	ing := mustIngest(t, s, dgst, 1000)
	mustWrite(t, ing, data[:400])
	ing.Abort(errors.New("connection reset"), false)

	info, err := s.Stat(ctx, dgst)
	if err != nil {
		t.Fatalf("Stat after Abort: %v", err)
	}
	if info.Complete || info.InUse || info.Size != 1000 || info.Present != 400 {
		t.Errorf("Stat = %+v, want a partial of 1000 bytes with 400 present, not in use", info)
	}
	ing = mustIngest(t, s, dgst, 1000)
	if ing.Offset() != 400 {
		t.Fatalf("resumed Offset = %d, want 400", ing.Offset())
	}
	mustWrite(t, ing, data[400:])
	if err := ing.Commit(ctx); err != nil {
		t.Fatalf("Commit after resume: %v", err)
	}
	checkContent(t, s, dgst, data)
}

func testAbortDiscards(t *testing.T, newStore NewStore) {
	s := newStore(t, 0)
	ctx := t.Context()
	data, dgst := Random(6, 1000)
	ing := mustIngest(t, s, dgst, 1000)
	mustWrite(t, ing, data[:400])
	ing.Abort(nil, true)
	if _, err := s.Stat(ctx, dgst); !errors.Is(err, puller.ErrNotFound) {
		t.Errorf("Stat after discard = %v, want ErrNotFound", err)
	}
	if used, _ := s.Usage(); used != 0 {
		t.Errorf("used after discard = %d, want 0", used)
	}
	ing = mustIngest(t, s, dgst, 1000)
	defer ing.Abort(nil, true)
	if ing.Offset() != 0 {
		t.Errorf("Offset after discard = %d, want 0", ing.Offset())
	}
}

func testEndedIngestion(t *testing.T, newStore NewStore) {
	s := newStore(t, 0)
	data, dgst := Random(7, 10)
	ing := mustIngest(t, s, dgst, 10)
	ing.Abort(nil, false)
	if _, err := ing.Write(data); err == nil {
		t.Errorf("Write after Abort succeeded")
	}
	if err := ing.Commit(t.Context()); err == nil {
		t.Errorf("Commit after Abort succeeded")
	}
	ing.Abort(nil, true) // no effect: already ended
	if _, err := s.Stat(t.Context(), dgst); err != nil {
		t.Errorf("a second Abort(discard) changed the partial: Stat = %v", err)
	}
}

func testSizeChangeRestarts(t *testing.T, newStore NewStore) {
	s := newStore(t, 0)
	ctx := t.Context()
	data, dgst := Random(8, 1000)
	ing := mustIngest(t, s, dgst, 999)
	mustWrite(t, ing, data[:500])
	ing.Abort(nil, false)
	ing = mustIngest(t, s, dgst, 1000)
	if ing.Offset() != 0 {
		t.Fatalf("Offset after a size change = %d, want 0", ing.Offset())
	}
	if used, _ := s.Usage(); used != 1000 {
		t.Errorf("used = %d, want 1000 (the old reservation released)", used)
	}
	mustWrite(t, ing, data)
	if err := ing.Commit(ctx); err != nil {
		t.Fatalf("Commit: %v", err)
	}
	checkContent(t, s, dgst, data)
}

func testDigestMismatch(t *testing.T, newStore NewStore) {
	s := newStore(t, 0)
	ctx := t.Context()
	_, dgst := Random(9, 1000)
	wrong, _ := Random(10, 1000)
	ing := mustIngest(t, s, dgst, 1000)
	mustWrite(t, ing, wrong)
	if err := ing.Commit(ctx); !errors.Is(err, puller.ErrDigestMismatch) {
		t.Fatalf("Commit(wrong bytes) = %v, want ErrDigestMismatch", err)
	}
	checkGone(t, s, dgst)
	if used, _ := s.Usage(); used != 0 {
		t.Errorf("used after a refused commit = %d, want 0", used)
	}
}

func testShortCommit(t *testing.T, newStore NewStore) {
	s := newStore(t, 0)
	data, dgst := Random(11, 1000)
	ing := mustIngest(t, s, dgst, 1000)
	mustWrite(t, ing, data[:999])
	if err := ing.Commit(t.Context()); !errors.Is(err, puller.ErrSizeMismatch) {
		t.Fatalf("Commit(999 of 1000 bytes) = %v, want ErrSizeMismatch", err)
	}
	checkGone(t, s, dgst)
}

func testOverrun(t *testing.T, newStore NewStore) {
	s := newStore(t, 0)
	data, dgst := Random(12, 1000)
	ing := mustIngest(t, s, dgst, 1000)
	defer ing.Abort(nil, true)
	mustWrite(t, ing, data[:600])
	if _, err := ing.Write(append(data[600:], 0)); !errors.Is(err, puller.ErrSizeMismatch) {
		t.Errorf("Write past the size = %v, want ErrSizeMismatch", err)
	}
	if ing.Offset() != 600 {
		t.Errorf("Offset after an overrun = %d, want 600", ing.Offset())
	}
}

type readResult struct {
	n   int
	err error
}

// readAsync runs b.ReadAt(p, off) on a goroutine.
func readAsync(b store.Blob, p []byte, off int64) <-chan readResult {
	ch := make(chan readResult, 1)
	go func() {
		n, err := b.ReadAt(p, off)
		ch <- readResult{n, err}
	}()
	return ch
}

// checkBlocked fails t if the read has returned. Call it after
// synctest.Wait, which returns once the reader is blocked for good.
func checkBlocked(t *testing.T, ch <-chan readResult, what string) {
	t.Helper()
	select {
	case r := <-ch:
		t.Fatalf("%s returned %d, %v before its bytes were there", what, r.n, r.err)
	default:
	}
}

func testStreamingReadAt(t *testing.T, newStore NewStore) {
	synctest.Test(t, func(t *testing.T) {
		s := newStore(t, 0)
		ctx := t.Context()
		data, dgst := Random(13, 1000)
		ing := mustIngest(t, s, dgst, 1000)
		defer ing.Abort(nil, true)
		b, err := s.Open(ctx, dgst)
		if err != nil {
			t.Fatalf("Open(ingesting): %v", err)
		}
		defer b.Close()
		if b.Complete() || b.Size() != 1000 {
			t.Fatalf("Complete, Size = %v, %d; want false, 1000", b.Complete(), b.Size())
		}

		p := make([]byte, 10)
		res := readAsync(b, p, 100)
		synctest.Wait()
		checkBlocked(t, res, "ReadAt(100..110) with nothing written")
		mustWrite(t, ing, data[:105])
		synctest.Wait()
		checkBlocked(t, res, "ReadAt(100..110) with 105 bytes written")
		mustWrite(t, ing, data[105:110])
		r := <-res
		if r.n != 10 || r.err != nil || !bytes.Equal(p, data[100:110]) {
			t.Fatalf("ReadAt(100..110) = %d, %v, %q", r.n, r.err, p)
		}
		// Bytes already written are read at once.
		if n, err := b.ReadAt(p, 0); n != 10 || err != nil || !bytes.Equal(p, data[:10]) {
			t.Fatalf("ReadAt(0..10) = %d, %v", n, err)
		}
		mustWrite(t, ing, data[110:])
		if err := ing.Commit(ctx); err != nil {
			t.Fatalf("Commit: %v", err)
		}
		// The partial Blob reads on after the commit.
		if got := ReadAll(t, b); !bytes.Equal(got, data) {
			t.Errorf("ReadAt(all) after commit differs")
		}
		checkReadAt(t, b, data)
		if info, err := s.Stat(ctx, dgst); err != nil || !info.Complete || !info.InUse {
			t.Errorf("Stat after commit with a reader open = %+v, %v; want complete, in use", info, err)
		}
	})
}

func testStreamingReadSeeker(t *testing.T, newStore NewStore) {
	synctest.Test(t, func(t *testing.T) {
		s := newStore(t, 0)
		ctx := t.Context()
		data, dgst := Random(14, 1000)
		ing := mustIngest(t, s, dgst, 1000)
		defer ing.Abort(nil, true)
		b, err := s.Open(ctx, dgst)
		if err != nil {
			t.Fatalf("Open: %v", err)
		}
		defer b.Close()
		type result struct {
			data []byte
			err  error
		}
		done := make(chan result, 1)
		go func() {
			got, err := io.ReadAll(b.ReadSeeker())
			done <- result{got, err}
		}()
		for off := 0; off < len(data); off += 100 {
			mustWrite(t, ing, data[off:off+100])
			synctest.Wait()
			select {
			case r := <-done:
				t.Fatalf("ReadAll returned %d bytes, %v before the commit", len(r.data), r.err)
			default:
			}
		}
		if err := ing.Commit(ctx); err != nil {
			t.Fatalf("Commit: %v", err)
		}
		r := <-done
		if r.err != nil || !bytes.Equal(r.data, data) {
			t.Errorf("ReadAll of a streaming blob = %d bytes, %v; want the %d written", len(r.data), r.err, len(data))
		}
	})
}

func testLastByteWithheld(t *testing.T, newStore NewStore) {
	synctest.Test(t, func(t *testing.T) {
		s := newStore(t, 0)
		ctx := t.Context()
		data, dgst := Random(15, 1000)
		ing := mustIngest(t, s, dgst, 1000)
		defer ing.Abort(nil, true)
		b, err := s.Open(ctx, dgst)
		if err != nil {
			t.Fatalf("Open: %v", err)
		}
		defer b.Close()
		type result struct {
			data []byte
			err  error
		}
		seq := make(chan result, 1)
		go func() {
			got, err := io.ReadAll(b.ReadSeeker())
			seq <- result{got, err}
		}()
		all := make([]byte, 1000)
		resAll := readAsync(b, all, 0)
		mustWrite(t, ing, data)
		// A range read gets the last byte before the commit (lazy readers
		// need a blob's end first); a read of the whole blob, or a
		// sequential reader reaching the end, waits for the verification.
		last := make([]byte, 1)
		if n, err := b.ReadAt(last, 999); n != 1 || err != nil || last[0] != data[999] {
			t.Fatalf("ReadAt(last byte) once written = %d, %v", n, err)
		}
		synctest.Wait()
		checkBlocked(t, resAll, "ReadAt(all) before commit")
		select {
		case r := <-seq:
			t.Fatalf("ReadSeeker read to the end (%d bytes, %v) before the commit", len(r.data), r.err)
		default:
		}
		if err := ing.Commit(ctx); err != nil {
			t.Fatalf("Commit: %v", err)
		}
		if r := <-resAll; r.n != 1000 || r.err != nil && r.err != io.EOF || !bytes.Equal(all, data) {
			t.Errorf("ReadAt(all) after commit = %d, %v", r.n, r.err)
		}
		if r := <-seq; r.err != nil || !bytes.Equal(r.data, data) {
			t.Errorf("ReadSeeker after commit = %d bytes, %v", len(r.data), r.err)
		}
	})
}

// testSparseWriteAt writes a blob end first: each range is readable once
// written, reads of a gap wait for it alone, Missing tracks the gaps, and
// the commit verifies the whole.
func testSparseWriteAt(t *testing.T, newStore NewStore) {
	synctest.Test(t, func(t *testing.T) {
		s := newStore(t, 0)
		ctx := t.Context()
		data, dgst := Random(30, 10000)
		ing := mustIngest(t, s, dgst, 10000)
		defer ing.Abort(nil, true)
		b, err := s.Open(ctx, dgst)
		if err != nil {
			t.Fatalf("Open: %v", err)
		}
		defer b.Close()
		mid := make([]byte, 100)
		resMid := readAsync(b, mid, 4000)
		mustWriteAt(t, ing, data[9000:], 9000)
		tail := make([]byte, 1000)
		if n, err := b.ReadAt(tail, 9000); n != 1000 || err != nil && err != io.EOF || !bytes.Equal(tail, data[9000:]) {
			t.Fatalf("ReadAt(written tail) = %d, %v", n, err)
		}
		want := []store.Range{{Start: 0, End: 9000}}
		if got := b.Missing(0, 10000); !slices.Equal(got, want) {
			t.Fatalf("Missing after writing the tail = %v, want %v", got, want)
		}
		mustWriteAt(t, ing, data[4050:4100], 4050)
		synctest.Wait()
		checkBlocked(t, resMid, "ReadAt(4000..4100) with 4050..4100 written")
		mustWriteAt(t, ing, data[3000:4050], 3000)
		if r := <-resMid; r.n != 100 || r.err != nil || !bytes.Equal(mid, data[4000:4100]) {
			t.Fatalf("ReadAt(4000..4100) = %d, %v", r.n, r.err)
		}
		want = []store.Range{{Start: 0, End: 3000}, {Start: 4100, End: 9000}}
		if got := ing.Missing(0, 10000); !slices.Equal(got, want) {
			t.Fatalf("Ingestion.Missing = %v, want %v", got, want)
		}
		if got := ing.Missing(5000, 20000); !slices.Equal(got, []store.Range{{Start: 5000, End: 9000}}) {
			t.Fatalf("Missing(5000, 20000) = %v, want [5000, 9000)", got)
		}
		if ing.Offset() != 0 {
			t.Fatalf("Offset with byte 0 missing = %d, want 0", ing.Offset())
		}
		if info, err := s.Stat(ctx, dgst); err != nil || info.Present != 2100 || info.Complete {
			t.Fatalf("Stat = %+v, %v; want 2100 bytes present", info, err)
		}
		// A commit with gaps is refused and discards the partial.
		mustWriteAt(t, ing, data[:3000], 0)
		mustWriteAt(t, ing, data[4100:9000], 4100)
		if got := ing.Missing(0, 10000); got != nil {
			t.Fatalf("Missing once all is written = %v", got)
		}
		if err := ing.Commit(ctx); err != nil {
			t.Fatalf("Commit: %v", err)
		}
		checkContent(t, s, dgst, data)
		if got := b.Missing(0, 10000); got != nil {
			t.Errorf("Missing of the partial Blob after the commit = %v", got)
		}
	})
}

// testSparseGapCommit: a commit with bytes missing is refused.
func testSparseGapCommit(t *testing.T, newStore NewStore) {
	s := newStore(t, 0)
	data, dgst := Random(31, 1000)
	ing := mustIngest(t, s, dgst, 1000)
	mustWriteAt(t, ing, data[500:], 500)
	if err := ing.Commit(t.Context()); !errors.Is(err, puller.ErrSizeMismatch) {
		t.Fatalf("Commit with 0..500 missing = %v, want ErrSizeMismatch", err)
	}
	checkGone(t, s, dgst)
}

// testSparseMismatch: one wrong byte in a range written out of order is
// found by the commit; the partial is gone and every reader, also of the
// bytes it read before, gets ErrDigestMismatch.
func testSparseMismatch(t *testing.T, newStore NewStore) {
	synctest.Test(t, func(t *testing.T) {
		s := newStore(t, 0)
		ctx := t.Context()
		data, dgst := Random(32, 5000)
		bad := bytes.Clone(data)
		bad[4321] ^= 1
		ing := mustIngest(t, s, dgst, 5000)
		b, err := s.Open(ctx, dgst)
		if err != nil {
			t.Fatalf("Open: %v", err)
		}
		defer b.Close()
		resAll := readAsync(b, make([]byte, 5000), 0)
		mustWriteAt(t, ing, bad[4000:], 4000)
		mustWrite(t, ing, bad[:4000])
		synctest.Wait()
		checkBlocked(t, resAll, "ReadAt(all) before commit")
		if err := ing.Commit(ctx); !errors.Is(err, puller.ErrDigestMismatch) {
			t.Fatalf("Commit = %v, want ErrDigestMismatch", err)
		}
		if r := <-resAll; !errors.Is(r.err, puller.ErrDigestMismatch) {
			t.Errorf("waiting ReadAt(all) = %d, %v; want ErrDigestMismatch", r.n, r.err)
		}
		if _, err := b.ReadAt(make([]byte, 10), 4320); !errors.Is(err, puller.ErrDigestMismatch) {
			t.Errorf("ReadAt(written range) after the refusal = %v; want ErrDigestMismatch", err)
		}
		checkGone(t, s, dgst)
	})
}

// testWriteAtKeepsPresent: bytes once written are not replaced, so what the
// commit hashes is what readers read.
func testWriteAtKeepsPresent(t *testing.T, newStore NewStore) {
	s := newStore(t, 0)
	data, dgst := Random(33, 3000)
	other, _ := Random(34, 3000)
	ing := mustIngest(t, s, dgst, 3000)
	mustWriteAt(t, ing, data[1000:2000], 1000)
	// Overlapping the written range with other bytes changes only the gaps.
	mix := bytes.Clone(data)
	copy(mix[500:1000], other[500:1000])
	mustWriteAt(t, ing, append(bytes.Clone(mix[500:1000]), other[1000:2500]...), 500)
	copy(mix[2000:2500], other[2000:2500])
	b, err := s.Open(t.Context(), dgst)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	defer b.Close()
	p := make([]byte, 2000)
	if n, err := b.ReadAt(p, 500); n != 2000 || err != nil || !bytes.Equal(p, mix[500:2500]) {
		t.Fatalf("ReadAt(500..2500) = %d, %v; want the first bytes written at each place", n, err)
	}
	// The right bytes offered later do not replace the wrong ones: the
	// commit refuses the blob.
	mustWriteAt(t, ing, data, 0)
	if err := ing.Commit(t.Context()); !errors.Is(err, puller.ErrDigestMismatch) {
		t.Fatalf("Commit with wrong bytes in 500..1000 = %v, want ErrDigestMismatch", err)
	}
	// Conversely, wrong bytes offered for a range already written change
	// nothing: the blob verifies.
	ing = mustIngest(t, s, dgst, 3000)
	mustWriteAt(t, ing, data[:2000], 0)
	mustWriteAt(t, ing, other[:2000], 0)
	mustWriteAt(t, ing, data[2000:], 2000)
	if err := ing.Commit(t.Context()); err != nil {
		t.Fatalf("Commit: %v", err)
	}
	checkContent(t, s, dgst, data)
}

func testWriteAtBounds(t *testing.T, newStore NewStore) {
	s := newStore(t, 0)
	data, dgst := Random(35, 1000)
	ing := mustIngest(t, s, dgst, 1000)
	defer ing.Abort(nil, true)
	for _, tc := range []struct {
		off int64
		n   int
	}{{-1, 10}, {995, 10}, {1000, 1}, {1 << 62, 1}} {
		if n, err := ing.WriteAt(make([]byte, tc.n), tc.off); n != 0 || !errors.Is(err, puller.ErrSizeMismatch) {
			t.Errorf("WriteAt(%d bytes at %d) = %d, %v; want ErrSizeMismatch", tc.n, tc.off, n, err)
		}
	}
	if got := ing.Missing(0, 1000); !slices.Equal(got, []store.Range{{Start: 0, End: 1000}}) {
		t.Errorf("Missing after refused writes = %v, want all", got)
	}
	mustWriteAt(t, ing, data[:0], 1000) // empty at the end: fine
}

// testConcurrentWriteAt: goroutines write overlapping chunks of one blob in
// any order while readers read ranges; the blob commits verified.
func testConcurrentWriteAt(t *testing.T, newStore NewStore) {
	s := newStore(t, 0)
	ctx := t.Context()
	const size = 1 << 20
	data, dgst := Random(36, size)
	ing := mustIngest(t, s, dgst, size)
	b, err := s.Open(ctx, dgst)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	defer b.Close()
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for g := range 8 {
		wg.Go(func() {
			for i := range 16 {
				chunk := (g*5 + i*3) % 16
				off := int64(chunk) * size / 16
				end := min(off+size/16+1000, size)
				if n, err := ing.WriteAt(data[off:end], off); err != nil || n != int(end-off) {
					errs <- fmt.Errorf("WriteAt(%d..%d) = %d, %v", off, end, n, err)
				}
			}
		})
		wg.Go(func() {
			p := make([]byte, 4096)
			off := int64(g) * size / 8
			if _, err := b.ReadAt(p, off); err != nil {
				errs <- fmt.Errorf("ReadAt(%d): %v", off, err)
			} else if !bytes.Equal(p, data[off:off+4096]) {
				errs <- fmt.Errorf("ReadAt(%d) read other bytes", off)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if err := ing.Commit(ctx); err != nil {
		t.Fatalf("Commit: %v", err)
	}
	checkContent(t, s, dgst, data)
}

// testSparseReadSeeker: a sequential reader goes through the bytes present
// and waits at a gap.
func testSparseReadSeeker(t *testing.T, newStore NewStore) {
	synctest.Test(t, func(t *testing.T) {
		s := newStore(t, 0)
		ctx := t.Context()
		data, dgst := Random(37, 1000)
		ing := mustIngest(t, s, dgst, 1000)
		defer ing.Abort(nil, true)
		mustWriteAt(t, ing, data[:300], 0)
		mustWriteAt(t, ing, data[600:], 600)
		b, err := s.Open(ctx, dgst)
		if err != nil {
			t.Fatalf("Open: %v", err)
		}
		defer b.Close()
		rs := b.ReadSeeker()
		p := make([]byte, 1000)
		if n, err := rs.Read(p); n != 300 || err != nil || !bytes.Equal(p[:n], data[:300]) {
			t.Fatalf("Read at 0 = %d, %v; want the 300 bytes before the gap", n, err)
		}
		if _, err := rs.Seek(600, io.SeekStart); err != nil {
			t.Fatal(err)
		}
		if n, err := rs.Read(p); n != 399 || err != nil || !bytes.Equal(p[:n], data[600:999]) {
			t.Fatalf("Read at 600 = %d, %v; want 399 bytes, the last one withheld", n, err)
		}
		rs.Seek(300, io.SeekStart)
		done := make(chan int, 1)
		go func() {
			n, _ := rs.Read(p)
			done <- n
		}()
		synctest.Wait()
		select {
		case n := <-done:
			t.Fatalf("Read in the gap returned %d bytes", n)
		default:
		}
		mustWriteAt(t, ing, data[300:600], 300)
		if n := <-done; n != 699 {
			t.Errorf("Read in the gap once written = %d bytes, want 699 (up to the withheld last byte)", n)
		}
	})
}

func testWaitingReaderGetsMismatch(t *testing.T, newStore NewStore) {
	synctest.Test(t, func(t *testing.T) {
		s := newStore(t, 0)
		ctx := t.Context()
		_, dgst := Random(16, 1000)
		wrong, _ := Random(17, 1000)
		ing := mustIngest(t, s, dgst, 1000)
		b, err := s.Open(ctx, dgst)
		if err != nil {
			t.Fatalf("Open: %v", err)
		}
		defer b.Close()
		res := readAsync(b, make([]byte, 1000), 0)
		mustWrite(t, ing, wrong)
		synctest.Wait()
		checkBlocked(t, res, "ReadAt(all) before commit")
		if err := ing.Commit(ctx); !errors.Is(err, puller.ErrDigestMismatch) {
			t.Fatalf("Commit = %v, want ErrDigestMismatch", err)
		}
		if r := <-res; !errors.Is(r.err, puller.ErrDigestMismatch) {
			t.Errorf("waiting ReadAt = %d, %v; want ErrDigestMismatch", r.n, r.err)
		}
		if _, err := b.ReadAt(make([]byte, 1), 999); !errors.Is(err, puller.ErrDigestMismatch) {
			t.Errorf("ReadAt(last byte) after the refusal = %v; want ErrDigestMismatch", err)
		}
		checkGone(t, s, dgst)
	})
}

func testWaitingReaderGetsAbortError(t *testing.T, newStore NewStore) {
	synctest.Test(t, func(t *testing.T) {
		s := newStore(t, 0)
		ctx := t.Context()
		data, dgst := Random(18, 1000)
		ing := mustIngest(t, s, dgst, 1000)
		b, err := s.Open(ctx, dgst)
		if err != nil {
			t.Fatalf("Open: %v", err)
		}
		defer b.Close()
		mustWrite(t, ing, data[:500])
		p := make([]byte, 100)
		res := readAsync(b, p, 450)
		synctest.Wait()
		checkBlocked(t, res, "ReadAt(450..550) with 500 bytes")
		cause := errors.New("upstream went away")
		ing.Abort(cause, false)
		if r := <-res; !errors.Is(r.err, cause) {
			t.Fatalf("waiting ReadAt after Abort = %d, %v; want the Abort error", r.n, r.err)
		}

		// With no ingestion, a read of missing bytes fails at once with the
		// Abort error rather than waiting for a writer that may never come.
		if n, err := b.ReadAt(p, 450); !errors.Is(err, cause) {
			t.Fatalf("ReadAt(450..550) after Abort, no ingestion = %d, %v; want the Abort error", n, err)
		}
		// The same Blob reads on when a new ingestion resumes.
		ing = mustIngest(t, s, dgst, 1000)
		defer ing.Abort(nil, true)
		if ing.Offset() != 500 {
			t.Fatalf("resumed Offset = %d, want 500", ing.Offset())
		}
		res = readAsync(b, p, 450)
		synctest.Wait()
		checkBlocked(t, res, "ReadAt(450..550) with a resumed ingestion at 500")
		mustWrite(t, ing, data[500:])
		if r := <-res; r.n != 100 || r.err != nil || !bytes.Equal(p, data[450:550]) {
			t.Fatalf("ReadAt(450..550) after resume = %d, %v", r.n, r.err)
		}
		if err := ing.Commit(ctx); err != nil {
			t.Fatalf("Commit: %v", err)
		}
		if got := ReadAll(t, b); !bytes.Equal(got, data) {
			t.Errorf("content read through the partial Blob differs")
		}
	})
}

func testWaitingReaderContextDone(t *testing.T, newStore NewStore) {
	synctest.Test(t, func(t *testing.T) {
		s := newStore(t, 0)
		_, dgst := Random(19, 1000)
		ing := mustIngest(t, s, dgst, 1000)
		defer ing.Abort(nil, true)
		ctx, cancel := context.WithCancel(t.Context())
		b, err := s.Open(ctx, dgst)
		if err != nil {
			t.Fatalf("Open: %v", err)
		}
		defer b.Close()
		res := readAsync(b, make([]byte, 10), 0)
		synctest.Wait()
		checkBlocked(t, res, "ReadAt with nothing written")
		cancel()
		if r := <-res; !errors.Is(r.err, context.Canceled) {
			t.Errorf("ReadAt after cancel = %d, %v; want context.Canceled", r.n, r.err)
		}
	})
}

func testPartialOnDiskReadable(t *testing.T, newStore NewStore) {
	synctest.Test(t, func(t *testing.T) {
		s := newStore(t, 0)
		ctx := t.Context()
		data, dgst := Random(20, 1000)
		ing := mustIngest(t, s, dgst, 1000)
		mustWrite(t, ing, data[:300])
		ing.Abort(nil, false)

		b, err := s.Open(ctx, dgst)
		if err != nil {
			t.Fatalf("Open(partial on disk): %v", err)
		}
		defer b.Close()
		if b.Complete() || b.Size() != 1000 {
			t.Fatalf("Complete, Size = %v, %d; want false, 1000", b.Complete(), b.Size())
		}
		p := make([]byte, 300)
		if n, err := b.ReadAt(p, 0); n != 300 || err != nil || !bytes.Equal(p, data[:300]) {
			t.Fatalf("ReadAt(present bytes) = %d, %v", n, err)
		}
		// Missing bytes of a partial whose ingestion ended fail at once.
		if n, err := b.ReadAt(make([]byte, 1000), 0); err == nil {
			t.Fatalf("ReadAt(all) of an aborted partial with no ingestion = %d, nil; want the abort error", n)
		}
		ing = mustIngest(t, s, dgst, 1000)
		defer ing.Abort(nil, true)
		res := readAsync(b, make([]byte, 1000), 0)
		synctest.Wait()
		checkBlocked(t, res, "ReadAt(all) of a resumed partial")
		mustWrite(t, ing, data[300:])
		if err := ing.Commit(ctx); err != nil {
			t.Fatalf("Commit: %v", err)
		}
		if r := <-res; r.n != 1000 || r.err != nil && r.err != io.EOF {
			t.Errorf("ReadAt(all) after commit = %d, %v", r.n, r.err)
		}
	})
}

func testDeleteWhileOpen(t *testing.T, newStore NewStore) {
	s := newStore(t, 0)
	ctx := t.Context()
	data, _ := Random(21, 10000)
	dgst := Put(t, s, data)
	b, err := s.Open(ctx, dgst)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	defer b.Close()
	if err := s.Delete(ctx, dgst); err != nil {
		t.Fatalf("Delete(open blob): %v", err)
	}
	checkGone(t, s, dgst)
	if got := ReadAll(t, b); !bytes.Equal(got, data) {
		t.Errorf("reading a deleted open blob: content differs")
	}
	if got, err := io.ReadAll(b.ReadSeeker()); err != nil || !bytes.Equal(got, data) {
		t.Errorf("ReadSeeker of a deleted open blob: %d bytes, %v", len(got), err)
	}
	// The digest can be stored again.
	Put(t, s, data)
	checkContent(t, s, dgst, data)
}

func testDeletePartial(t *testing.T, newStore NewStore) {
	s := newStore(t, 0)
	ctx := t.Context()
	data, dgst := Random(22, 1000)
	ing := mustIngest(t, s, dgst, 1000)
	mustWrite(t, ing, data[:500])
	ing.Abort(nil, false)
	b, err := s.Open(ctx, dgst)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	defer b.Close()
	if err := s.Delete(ctx, dgst); err != nil {
		t.Fatalf("Delete(partial): %v", err)
	}
	checkGone(t, s, dgst)
	p := make([]byte, 100)
	if n, err := b.ReadAt(p, 0); n != 100 || err != nil || !bytes.Equal(p, data[:100]) {
		t.Errorf("ReadAt(present bytes) of a deleted partial = %d, %v", n, err)
	}
	if _, err := b.ReadAt(p, 900); err == nil {
		t.Errorf("ReadAt(missing bytes) of a deleted partial succeeded")
	}
	ing = mustIngest(t, s, dgst, 1000)
	defer ing.Abort(nil, true)
	if ing.Offset() != 0 {
		t.Errorf("Offset after deleting the partial = %d, want 0", ing.Offset())
	}
}

func testPins(t *testing.T, newStore NewStore) {
	s := newStore(t, 0)
	ctx := t.Context()
	data, dgst := Random(23, 100)
	if err := s.Pin(ctx, dgst); err != nil {
		t.Fatalf("Pin(absent): %v", err)
	}
	if err := s.Pin(ctx, dgst); err != nil {
		t.Fatalf("Pin twice: %v", err)
	}
	if _, err := s.Stat(ctx, dgst); !errors.Is(err, puller.ErrNotFound) {
		t.Errorf("Stat(pinned, absent) = %v, want ErrNotFound", err)
	}
	Put(t, s, data)
	if info, err := s.Stat(ctx, dgst); err != nil || !info.Pinned {
		t.Errorf("Stat(pinned) = %+v, %v; want Pinned", info, err)
	}
	if evicted, err := s.Evict(ctx, 0); err != nil || len(evicted) != 0 {
		t.Errorf("Evict(0) with only a pinned blob = %v, %v; want nothing", evicted, err)
	}
	if err := s.Unpin(ctx, dgst); err != nil {
		t.Fatalf("Unpin: %v", err)
	}
	if err := s.Unpin(ctx, dgst); err != nil {
		t.Errorf("Unpin twice: %v", err)
	}
	if info, err := s.Stat(ctx, dgst); err != nil || info.Pinned {
		t.Errorf("Stat(unpinned) = %+v, %v; want not Pinned", info, err)
	}
	if evicted, err := s.Evict(ctx, 0); err != nil || len(evicted) != 1 || evicted[0].Digest != dgst {
		t.Errorf("Evict(0) after Unpin = %v, %v; want the blob", evicted, err)
	}
}

func testListAndUsage(t *testing.T, newStore NewStore) {
	s := newStore(t, 1<<20)
	ctx := t.Context()
	if infos, err := s.List(ctx); err != nil || len(infos) != 0 {
		t.Fatalf("List(empty) = %v, %v", infos, err)
	}
	a, _ := Random(24, 100)
	b, _ := Random(25, 200)
	c, dc := Random(26, 300)
	da, db := Put(t, s, a), Put(t, s, b)
	ing := mustIngest(t, s, dc, 300)
	mustWrite(t, ing, c[:50])
	ing.Abort(nil, false)

	infos, err := s.List(ctx)
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	want := map[v1.Hash]store.Info{
		da: {Digest: da, Size: 100, Present: 100, Complete: true},
		db: {Digest: db, Size: 200, Present: 200, Complete: true},
		dc: {Digest: dc, Size: 300, Present: 50},
	}
	if len(infos) != len(want) {
		t.Fatalf("List = %d blobs, want %d: %+v", len(infos), len(want), infos)
	}
	for _, got := range infos {
		w, ok := want[got.Digest]
		got.LastUsed = w.LastUsed
		if !ok || got != w {
			t.Errorf("List has %+v, want %+v", got, w)
		}
	}
	if used, quota := s.Usage(); used != 600 || quota != 1<<20 {
		t.Errorf("Usage = %d, %d; want 600 (partial counted at its size), %d", used, quota, 1<<20)
	}
}

func testEvict(t *testing.T, newStore NewStore) {
	s := newStore(t, 0)
	ctx := t.Context()
	a, _ := Random(27, 100)
	b, _ := Random(28, 100)
	c, _ := Random(29, 100)
	da, db, dc := Put(t, s, a), Put(t, s, b), Put(t, s, c)
	open, err := s.Open(ctx, da)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	defer open.Close()
	if err := s.Pin(ctx, db); err != nil {
		t.Fatalf("Pin: %v", err)
	}
	if evicted, err := s.Evict(ctx, 300); err != nil || len(evicted) != 0 {
		t.Errorf("Evict(target = used) = %v, %v; want nothing", evicted, err)
	}
	evicted, err := s.Evict(ctx, 0)
	if err != nil {
		t.Fatalf("Evict(0): %v", err)
	}
	if len(evicted) != 1 || evicted[0].Digest != dc || evicted[0].Size != 100 {
		t.Fatalf("Evict(0) = %+v, want only the unpinned, unused blob %s", evicted, dc)
	}
	checkGone(t, s, dc)
	if used, _ := s.Usage(); used != 200 {
		t.Errorf("used after Evict = %d, want 200", used)
	}
	checkContent(t, s, da, a)
	checkContent(t, s, db, b)
}

func testQuotaEvicts(t *testing.T, newStore NewStore) {
	s := newStore(t, 300)
	ctx := t.Context()
	a, _ := Random(30, 100)
	b, _ := Random(31, 100)
	c, _ := Random(32, 100)
	d, dd := Random(33, 100)
	da, db, dc := Put(t, s, a), Put(t, s, b), Put(t, s, c)
	open, err := s.Open(ctx, da)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	defer open.Close()
	if err := s.Pin(ctx, db); err != nil {
		t.Fatalf("Pin: %v", err)
	}
	ing := mustIngest(t, s, dd, 100)
	mustWrite(t, ing, d)
	if err := ing.Commit(ctx); err != nil {
		t.Fatalf("Commit: %v", err)
	}
	checkGone(t, s, dc)
	checkContent(t, s, da, a)
	checkContent(t, s, db, b)
	checkContent(t, s, dd, d)
	if used, quota := s.Usage(); used != 300 || quota != 300 {
		t.Errorf("Usage = %d, %d; want 300, 300", used, quota)
	}
}

func testQuotaImpossible(t *testing.T, newStore NewStore) {
	s := newStore(t, 250)
	ctx := t.Context()
	a, _ := Random(34, 100)
	b, _ := Random(35, 100)
	_, dc := Random(36, 100)
	da, db := Put(t, s, a), Put(t, s, b)
	open, err := s.Open(ctx, da)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	defer open.Close()
	if err := s.Pin(ctx, db); err != nil {
		t.Fatalf("Pin: %v", err)
	}
	before, _ := s.List(ctx)
	if _, err := s.Ingest(ctx, dc, 100); !errors.Is(err, puller.ErrQuota) {
		t.Fatalf("Ingest with only pinned and open blobs to evict = %v, want ErrQuota", err)
	}
	if _, err := s.Ingest(ctx, dc, 251); !errors.Is(err, puller.ErrQuota) {
		t.Fatalf("Ingest(more than the quota) = %v, want ErrQuota", err)
	}
	after, _ := s.List(ctx)
	if len(after) != len(before) {
		t.Errorf("List after ErrQuota = %+v, want %+v", after, before)
	}
	if used, _ := s.Usage(); used != 200 {
		t.Errorf("used after ErrQuota = %d, want 200", used)
	}
}

// testConcurrent reads a blob from many goroutines while it is ingested; run
// it with -race.
func testConcurrent(t *testing.T, newStore NewStore) {
	s := newStore(t, 0)
	ctx := t.Context()
	const size = 1 << 20
	data, dgst := Random(37, size)
	other, _ := Random(38, 1000)
	dOther := Put(t, s, other)
	ing := mustIngest(t, s, dgst, size)
	defer ing.Abort(nil, true)

	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			b, err := s.Open(ctx, dgst)
			if err != nil {
				t.Errorf("Open: %v", err)
				return
			}
			defer b.Close()
			p := make([]byte, 4096)
			for off := int64(g * 4096); off < size; off += 8 * 4096 {
				n, err := b.ReadAt(p, off)
				if err != nil && err != io.EOF || !bytes.Equal(p[:n], data[off:off+int64(n)]) {
					t.Errorf("ReadAt(%d) = %d, %v", off, n, err)
					return
				}
				if _, err := s.Stat(ctx, dgst); err != nil {
					t.Errorf("Stat: %v", err)
				}
				if _, err := s.List(ctx); err != nil {
					t.Errorf("List: %v", err)
				}
				if o, err := s.Open(ctx, dOther); err != nil {
					t.Errorf("Open(other): %v", err)
				} else {
					o.Close()
				}
			}
		})
	}
	for off := 0; off < size; off += 10000 {
		mustWrite(t, ing, data[off:min(off+10000, size)])
	}
	if err := ing.Commit(ctx); err != nil {
		t.Fatalf("Commit: %v", err)
	}
	wg.Wait()
	checkContent(t, s, dgst, data)
}

func mustIngest(t *testing.T, s store.Ingester, dgst v1.Hash, size int64) store.Ingestion {
	t.Helper()
	ing, err := s.Ingest(t.Context(), dgst, size)
	if err != nil {
		t.Fatalf("Ingest(%s, %d): %v", dgst, size, err)
	}
	return ing
}

func mustWriteAt(t *testing.T, ing store.Ingestion, p []byte, off int64) {
	t.Helper()
	if n, err := ing.WriteAt(p, off); n != len(p) || err != nil {
		t.Fatalf("WriteAt(%d bytes at %d) = %d, %v", len(p), off, n, err)
	}
}

func mustWrite(t *testing.T, ing store.Ingestion, p []byte) {
	t.Helper()
	if n, err := ing.Write(p); n != len(p) || err != nil {
		t.Fatalf("Write(%d bytes) = %d, %v", len(p), n, err)
	}
}

// checkContent checks that dgst is complete and reads back as data.
func checkContent(t *testing.T, s store.ContentStore, dgst v1.Hash, data []byte) {
	t.Helper()
	b, err := s.Open(t.Context(), dgst)
	if err != nil {
		t.Fatalf("Open(%s): %v", dgst, err)
	}
	defer b.Close()
	if !b.Complete() {
		t.Errorf("Open(%s): not complete", dgst)
	}
	if got := ReadAll(t, b); !bytes.Equal(got, data) {
		t.Errorf("content of %s differs from what was written", dgst)
	}
}

// checkGone checks that the store has nothing of dgst.
func checkGone(t *testing.T, s store.ContentStore, dgst v1.Hash) {
	t.Helper()
	ctx := t.Context()
	if _, err := s.Stat(ctx, dgst); !errors.Is(err, puller.ErrNotFound) {
		t.Errorf("Stat(%s) = %v, want ErrNotFound", dgst, err)
	}
	if b, err := s.Open(ctx, dgst); !errors.Is(err, puller.ErrNotFound) {
		if err == nil {
			b.Close()
		}
		t.Errorf("Open(%s) = %v, want ErrNotFound", dgst, err)
	}
	infos, _ := s.List(ctx)
	for _, info := range infos {
		if info.Digest == dgst {
			t.Errorf("List has %+v", info)
		}
	}
}
