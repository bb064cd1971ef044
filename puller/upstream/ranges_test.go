package upstream_test

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/random"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/thaw-dev/thaw/puller"
)

// TestFetchRangeFromRegistry runs FetchRange and BlobSize against
// go-containerregistry's registry.
func TestFetchRangeFromRegistry(t *testing.T) {
	o := newOrigin(t, newRegistryHandler())
	img, err := random.Image(200_000, 1)
	if err != nil {
		t.Fatal(err)
	}
	p := o.push(t, "test/ranges", "v1", img)
	dgst, blob := layerOf(t, img)
	client := newClient(t, nil)
	repo := p.tag.Context()
	size, err := client.BlobSize(t.Context(), repo, dgst)
	if err != nil || size != int64(len(blob)) {
		t.Fatalf("BlobSize = %d, %v; want %d", size, err, len(blob))
	}
	for _, r := range [][2]int64{{0, 1}, {0, 2}, {size - 1, 1}, {size / 2, 1000}, {0, size}, {size - 51, 51}} {
		rc, err := client.FetchRange(t.Context(), repo, dgst, r[0], r[1])
		if err != nil {
			t.Fatalf("FetchRange(%d, %d): %v", r[0], r[1], err)
		}
		if got := readAll(t, rc); !bytes.Equal(got, blob[r[0]:r[0]+r[1]]) {
			t.Errorf("FetchRange(%d, %d) = %d bytes, not the range", r[0], r[1], len(got))
		}
	}
	// This registry calls a range past the end an unknown blob (416
	// BLOB_UNKNOWN); an origin serving standard 416s is covered below.
	if rc, err := client.FetchRange(t.Context(), repo, dgst, size-10, 20); err == nil {
		rc.Close()
		t.Errorf("FetchRange past the end succeeded")
	}
	missing := v1.Hash{Algorithm: "sha256", Hex: strings.Repeat("ab", 32)}
	if _, err := client.BlobSize(t.Context(), repo, missing); !errors.Is(err, puller.ErrNotFound) {
		t.Errorf("BlobSize(absent) = %v, want ErrNotFound", err)
	}
	if rc, err := client.FetchRange(t.Context(), repo, missing, 0, 10); !errors.Is(err, puller.ErrNotFound) {
		if err == nil {
			rc.Close()
		}
		t.Errorf("FetchRange(absent) = %v, want ErrNotFound", err)
	}
	for _, r := range [][2]int64{{-1, 10}, {0, 0}, {10, -1}} {
		if _, err := client.FetchRange(t.Context(), repo, dgst, r[0], r[1]); err == nil {
			t.Errorf("FetchRange(%d, %d) succeeded", r[0], r[1])
		}
	}
}

// TestFetchRangeOrigins covers origins that serve ranges their own way or
// not at all.
func TestFetchRangeOrigins(t *testing.T) {
	blob := make([]byte, 100_000)
	rand.Read(blob)
	dgst, _, err := v1.SHA256(bytes.NewReader(blob))
	if err != nil {
		t.Fatal(err)
	}
	for _, mode := range []string{"serve content", "redirect"} {
		t.Run(mode, func(t *testing.T) {
			o := blobOrigin(t, blob, mode)
			client := newClient(t, nil)
			rc, err := client.FetchRange(t.Context(), o.repo(t, "test/blob"), dgst, 5000, 777)
			if err != nil {
				t.Fatal(err)
			}
			if got := readAll(t, rc); !bytes.Equal(got, blob[5000:5777]) {
				t.Errorf("got %d bytes, not the range", len(got))
			}
			if rc, err := client.FetchRange(t.Context(), o.repo(t, "test/blob"), dgst, int64(len(blob)), 10); !errors.Is(err, puller.ErrSizeMismatch) {
				if err == nil {
					rc.Close()
				}
				t.Errorf("FetchRange past the end = %v, want ErrSizeMismatch", err)
			}
		})
	}
	t.Run("ignore range", func(t *testing.T) {
		o := blobOrigin(t, blob, "ignore range")
		client := newClient(t, nil)
		// At offset 0 the whole blob's first bytes are the range.
		rc, err := client.FetchRange(t.Context(), o.repo(t, "test/blob"), dgst, 0, 100)
		if err != nil {
			t.Fatal(err)
		}
		if got := readAll(t, rc); !bytes.Equal(got, blob[:100]) {
			t.Errorf("range at 0 from an origin ignoring ranges: %d bytes, not the range", len(got))
		}
		// Later, skipping the blob's start for every range is refused.
		if _, err := client.FetchRange(t.Context(), o.repo(t, "test/blob"), dgst, 5000, 100); !errors.Is(err, puller.ErrNoRanges) {
			t.Errorf("range at 5000 from an origin ignoring ranges = %v, want ErrNoRanges", err)
		}
	})
	for _, tt := range []struct {
		name    string
		handler func(w http.ResponseWriter, r *http.Request)
		want    string
	}{
		{"other range", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Range", fmt.Sprintf("bytes 0-99/%d", len(blob)))
			w.WriteHeader(http.StatusPartialContent)
			w.Write(blob[:100])
		}, "asked for bytes=5000-5099"},
		{"short body", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Range", fmt.Sprintf("bytes 5000-5099/%d", len(blob)))
			w.Header().Set("Content-Length", "100")
			w.WriteHeader(http.StatusPartialContent)
			w.Write(blob[5000:5050])
		}, "unexpected EOF"},
		{"bad content range", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Range", "bytes 5000-4000/10")
			w.WriteHeader(http.StatusPartialContent)
		}, "Content-Range"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			o := newOrigin(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path == "/v2/" {
					return
				}
				tt.handler(w, r)
			}))
			client := newClient(t, nil)
			rc, err := client.FetchRange(t.Context(), o.repo(t, "test/blob"), dgst, 5000, 100)
			if err == nil {
				_, err = io.ReadAll(rc)
				rc.Close()
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("FetchRange = %v, want an error mentioning %q", err, tt.want)
			}
		})
	}
}
