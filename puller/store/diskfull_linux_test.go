package store_test

import (
	"errors"
	"os"
	"syscall"
	"testing"

	"github.com/thaw-dev/thaw/puller"
	"github.com/thaw-dev/thaw/puller/store"
	"github.com/thaw-dev/thaw/puller/store/storetest"
)

// TestDiskFull fills a 1 MiB tmpfs with a 2 MiB blob.
func TestDiskFull(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a 1 MiB tmpfs that fills up; run the tests as root to cover a full disk")
	}
	root := t.TempDir()
	if err := syscall.Mount("tmpfs", root, "tmpfs", 0, "size=1m"); err != nil {
		t.Skipf("cannot mount a tmpfs (%v); needs CAP_SYS_ADMIN", err)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(root, 0); err != nil {
			t.Errorf("unmount %s: %v", root, err)
		}
	})
	ctx := t.Context()
	s := newStore(t, root)
	const size = 2 << 20
	data, dgst := storetest.Random(70, size)
	ing, err := s.Ingest(ctx, dgst, size)
	if err != nil {
		t.Fatalf("Ingest: %v", err)
	}
	var werr error
	for off := 0; off < size && werr == nil; off += 64 << 10 {
		_, werr = ing.Write(data[off : off+64<<10])
	}
	if !errors.Is(werr, puller.ErrQuota) || !errors.Is(werr, syscall.ENOSPC) {
		t.Fatalf("Write to a full disk = %v, want ErrQuota and ENOSPC", werr)
	}
	written := ing.Offset()
	if written == 0 || written >= size {
		t.Fatalf("Offset after ENOSPC = %d, want some of the %d bytes", written, size)
	}
	// What the disk refused is missing, whatever the data file's length.
	if got := ing.Missing(0, size); len(got) != 1 || got[0] != (store.Range{Start: written, End: size}) {
		t.Fatalf("Missing after ENOSPC = %v, want [%d, %d)", got, written, size)
	}
	ing.Abort(werr, false)

	// The record of the ranges may not fit on the full disk either: a
	// restart then resumes with fewer bytes, never with more.
	s = newStore(t, root)
	info, err := s.Stat(ctx, dgst)
	if err != nil || info.Complete || info.Present > written || info.Size != size {
		t.Fatalf("Stat after restart = %+v, %v; want a partial with at most %d bytes", info, err, written)
	}
	ing, err = s.Ingest(ctx, dgst, size)
	if err != nil {
		t.Fatalf("Ingest after restart: %v", err)
	}
	if ing.Offset() != info.Present {
		t.Fatalf("Offset after restart = %d, want %d", ing.Offset(), info.Present)
	}
	// Make room, then a smaller blob fits.
	ing.Abort(nil, true)
	small, _ := storetest.Random(71, 256<<10)
	dSmall := storetest.Put(t, s, small)
	b, err := s.Open(ctx, dSmall)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	defer b.Close()
	if got := storetest.ReadAll(t, b); len(got) != len(small) {
		t.Errorf("read %d bytes of the small blob, want %d", len(got), len(small))
	}
}
