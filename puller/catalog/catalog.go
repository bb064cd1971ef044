package catalog

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// Image is one reference the node has resolved.
type Image struct {
	// Ref is the full reference as resolved: registry/repository:tag or
	// registry/repository@digest.
	Ref        string    `json:"ref"`
	Digest     v1.Hash   `json:"digest"`
	MediaType  string    `json:"mediaType"`
	Size       int64     `json:"size"`
	ResolvedAt time.Time `json:"resolvedAt"`
}

// Catalog is the persistent map of references to the images they resolved to.
// It is safe for concurrent use.
type Catalog struct {
	path string

	mu     sync.Mutex
	images map[string]Image
}

type file struct {
	Images []Image `json:"images"`
}

// Open loads the catalog at path, or starts an empty one if the file does not
// exist yet.
func Open(path string) (*Catalog, error) {
	c := &Catalog{path: path, images: map[string]Image{}}
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return c, nil
	}
	if err != nil {
		return nil, fmt.Errorf("open catalog: %w", err)
	}
	var f file
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, fmt.Errorf("catalog %s is corrupt (move it away to start afresh): %w", path, err)
	}
	for _, img := range f.Images {
		c.images[img.Ref] = img
	}
	return c, nil
}

// Get returns what ref last resolved to.
func (c *Catalog) Get(ref string) (Image, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	img, ok := c.images[ref]
	return img, ok
}

// Put records img and persists the catalog atomically.
func (c *Catalog) Put(img Image) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.images[img.Ref] = img
	return c.save()
}

// Images returns every image, sorted by reference.
func (c *Catalog) Images() []Image {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]Image, 0, len(c.images))
	for _, img := range c.images {
		out = append(out, img)
	}
	slices.SortFunc(out, func(a, b Image) int {
		switch {
		case a.Ref < b.Ref:
			return -1
		case a.Ref > b.Ref:
			return 1
		}
		return 0
	})
	return out
}

// save writes the catalog to a temporary file, syncs it and renames it over the
// old one, so a crash leaves either the old or the new catalog. Callers hold mu.
func (c *Catalog) save() error {
	f := file{Images: make([]Image, 0, len(c.images))}
	for _, img := range c.images {
		f.Images = append(f.Images, img)
	}
	b, err := json.MarshalIndent(f, "", " ")
	if err != nil {
		return fmt.Errorf("encode catalog: %w", err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(c.path), ".catalog-*")
	if err != nil {
		return fmt.Errorf("save catalog: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return fmt.Errorf("save catalog: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("save catalog: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("save catalog: %w", err)
	}
	if err := os.Rename(tmp.Name(), c.path); err != nil {
		return fmt.Errorf("save catalog: %w", err)
	}
	return nil
}
