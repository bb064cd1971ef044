package catalog_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/thaw-dev/thaw/puller/catalog"
	"github.com/thaw-dev/thaw/puller/store/storetest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// image returns a catalog entry for ref whose digest is derived from seed.
func image(ref string, seed uint64, at time.Time) catalog.Image {
	_, dgst := storetest.Random(seed, 32)
	return catalog.Image{
		Ref:        ref,
		Digest:     dgst,
		MediaType:  "application/vnd.oci.image.index.v1+json",
		Size:       int64(100 + seed),
		ResolvedAt: at,
	}
}

func sameImage(a, b catalog.Image) bool {
	return a.Ref == b.Ref && a.Digest == b.Digest && a.MediaType == b.MediaType &&
		a.Size == b.Size && a.ResolvedAt.Equal(b.ResolvedAt)
}

func open(t *testing.T, path string) *catalog.Catalog {
	t.Helper()
	c, err := catalog.Open(path)
	if err != nil {
		t.Fatalf("Open(%s): %v", path, err)
	}
	return c
}

func TestOpenMissingFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "catalog.json")
	c := open(t, path)
	if imgs := c.Images(); len(imgs) != 0 {
		t.Fatalf("Images() of a new catalog = %v, want none", imgs)
	}
	if _, ok := c.Get("registry.example/app:v1"); ok {
		t.Fatal("Get on a new catalog found something")
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Fatalf("Open created %s before any Put (stat: %v)", path, err)
	}
}

func TestPutGetImagesPersist(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "catalog.json")
	at := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	imgs := []catalog.Image{
		image("registry.example/b:v1", 1, at),
		image("registry.example/a:v2", 2, at.Add(time.Minute)),
		image("registry.example/a@sha256:"+strings.Repeat("ab", 32), 3, at.Add(2*time.Minute)),
	}

	c := open(t, path)
	for _, img := range imgs {
		if err := c.Put(img); err != nil {
			t.Fatalf("Put(%s): %v", img.Ref, err)
		}
	}
	// A second Put of a reference replaces the first.
	moved := image("registry.example/b:v1", 4, at.Add(time.Hour))
	if err := c.Put(moved); err != nil {
		t.Fatal(err)
	}
	imgs[0] = moved

	check := func(t *testing.T, c *catalog.Catalog) {
		t.Helper()
		for _, want := range imgs {
			got, ok := c.Get(want.Ref)
			if !ok || !sameImage(got, want) {
				t.Errorf("Get(%s) = %+v, %v; want %+v", want.Ref, got, ok, want)
			}
		}
		got := c.Images()
		wantOrder := []string{imgs[1].Ref, imgs[2].Ref, imgs[0].Ref} // by reference; ':' sorts before '@'
		if len(got) != len(wantOrder) {
			t.Fatalf("Images() = %d entries, want %d", len(got), len(wantOrder))
		}
		for i, ref := range wantOrder {
			if got[i].Ref != ref {
				t.Errorf("Images()[%d] = %s, want %s", i, got[i].Ref, ref)
			}
		}
	}
	t.Run("same catalog", func(t *testing.T) { check(t, c) })
	t.Run("reopened", func(t *testing.T) { check(t, open(t, path)) })

	// save leaves no temporary files next to the catalog.
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 || entries[0].Name() != "catalog.json" {
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		t.Fatalf("directory holds %v, want only catalog.json", names)
	}
}

func TestOpenCorrupt(t *testing.T) {
	tests := []struct {
		name    string
		content string
	}{
		{"garbage", "this is not json"},
		{"truncated", `{"images": [{"ref": "a", "digest": "sha256:`},
		{"wrong type", `{"images": {"ref": "a"}}`},
		{"bad digest", `{"images": [{"ref": "a", "digest": "md5:xyz"}]}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "catalog.json")
			if err := os.WriteFile(path, []byte(tt.content), 0o644); err != nil {
				t.Fatal(err)
			}
			_, err := catalog.Open(path)
			if err == nil {
				t.Fatal("Open of a corrupt catalog succeeded")
			}
			// The error names the file and says what to do about it.
			for _, want := range []string{path, "corrupt", "move it away"} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not mention %q", err, want)
				}
			}
		})
	}
}

func TestOpenUnreadable(t *testing.T) {
	dir := t.TempDir() // a directory where the file should be
	if _, err := catalog.Open(dir); err == nil || !strings.Contains(err.Error(), "open catalog") {
		t.Fatalf("Open(a directory) = %v, want an open catalog error", err)
	}
}

func TestPutFailsWhenDirectoryIsGone(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "gone")
	c := open(t, filepath.Join(dir, "catalog.json"))
	if err := c.Put(image("registry.example/a:v1", 1, time.Now())); err == nil || !strings.Contains(err.Error(), "save catalog") {
		t.Fatalf("Put into a missing directory = %v, want a save catalog error", err)
	}
}

func TestConcurrentPut(t *testing.T) {
	path := filepath.Join(t.TempDir(), "catalog.json")
	c := open(t, path)
	const writers, each = 8, 15
	at := time.Date(2025, 3, 1, 0, 0, 0, 0, time.UTC)
	var wg sync.WaitGroup
	errs := make(chan error, writers*each)
	for w := range writers {
		wg.Go(func() {
			for i := range each {
				ref := fmt.Sprintf("registry.example/w%d:v%d", w, i)
				if err := c.Put(image(ref, uint64(w*each+i), at)); err != nil {
					errs <- err
				}
				// Readers run alongside the writers.
				if _, ok := c.Get(ref); !ok {
					errs <- fmt.Errorf("Get(%s) after its Put found nothing", ref)
				}
				_ = c.Images()
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if got := len(c.Images()); got != writers*each {
		t.Fatalf("Images() = %d entries, want %d", got, writers*each)
	}
	if got := len(open(t, path).Images()); got != writers*each {
		t.Fatalf("reopened catalog has %d entries, want %d", got, writers*each)
	}
}
