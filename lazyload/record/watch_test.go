package record

import (
	"os"
	"path/filepath"
	"slices"
	"testing"

	"golang.org/x/sys/unix"
)

// TestWatcherRecordsOpensInOrder: files opened on the watched file system
// are recorded once each, in the order of their first opening; files on
// other file systems are not.
func TestWatcherRecordsOpensInOrder(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("fanotify and mounting need root")
	}
	dir := t.TempDir()
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size=4m"); err != nil {
		t.Fatalf("mount tmpfs: %v", err)
	}
	defer unix.Unmount(dir, unix.MNT_DETACH)
	for _, n := range []string{"a", "b", "c"} {
		if err := os.WriteFile(filepath.Join(dir, n), []byte(n), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	outside := filepath.Join(t.TempDir(), "outside")
	if err := os.WriteFile(outside, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	w, err := watch(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer w.close()
	for _, n := range []string{"b", "a", "b", "c"} {
		if _, err := os.ReadFile(filepath.Join(dir, n)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := os.ReadFile(outside); err != nil {
		t.Fatal(err)
	}
	got := w.stop()
	want := []string{filepath.Join(dir, "b"), filepath.Join(dir, "a"), filepath.Join(dir, "c")}
	if !slices.Equal(got, want) {
		t.Errorf("recorded %v, want %v", got, want)
	}
}

func TestReadyWriter(t *testing.T) {
	r := newReadyWriter("ready")
	r.Write([]byte("starting\nrea"))
	select {
	case <-r.ready:
		t.Fatal("ready before the line was complete")
	default:
	}
	r.Write([]byte("dy\n"))
	select {
	case <-r.ready:
	default:
		t.Fatal("not ready after the ready line")
	}
	r.Write([]byte("ready again\n")) // closes once only
	if r.String() != "starting\nready\nready again\n" {
		t.Errorf("output %q", r.String())
	}
}
