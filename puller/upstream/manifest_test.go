package upstream_test

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/thaw-dev/thaw/puller"
)

func randomImage(t *testing.T) v1.Image {
	t.Helper()
	img, err := random.Image(1024, 2)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

func randomIndex(t *testing.T) v1.ImageIndex {
	t.Helper()
	idx, err := random.Index(512, 1, 2)
	if err != nil {
		t.Fatal(err)
	}
	return idx
}

func TestResolveAndManifest(t *testing.T) {
	o := newOrigin(t, newRegistryHandler())
	client := newClient(t, nil)

	tests := []struct {
		name          string
		artifact      func(t *testing.T) artifact
		wantMediaType types.MediaType
	}{
		{"docker image", func(t *testing.T) artifact { return randomImage(t) }, types.DockerManifestSchema2},
		{"oci image", func(t *testing.T) artifact {
			img := mutate.MediaType(randomImage(t), types.OCIManifestSchema1)
			return mutate.ConfigMediaType(img, types.OCIConfigJSON)
		}, types.OCIManifestSchema1},
		{"oci index", func(t *testing.T) artifact { return randomIndex(t) }, types.OCIImageIndex},
		{"docker manifest list", func(t *testing.T) artifact {
			return mutate.IndexMediaType(randomIndex(t), types.DockerManifestList)
		}, types.DockerManifestList},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := o.push(t, fmt.Sprintf("test/app%d", i), "v1", tt.artifact(t))
			if p.desc.MediaType != tt.wantMediaType {
				t.Fatalf("test setup: pushed %s, want %s", p.desc.MediaType, tt.wantMediaType)
			}
			want := puller.Descriptor{Digest: p.desc.Digest, MediaType: string(tt.wantMediaType), Size: p.desc.Size}
			for _, ref := range []name.Reference{p.tag, p.digest} {
				got, err := client.Resolve(t.Context(), ref)
				if err != nil {
					t.Fatalf("Resolve(%s): %v", ref, err)
				}
				if got != want {
					t.Errorf("Resolve(%s) = %+v, want %+v", ref, got, want)
				}
			}
			body, mt, err := client.Manifest(t.Context(), p.tag.Context(), p.desc.Digest)
			if err != nil {
				t.Fatalf("Manifest: %v", err)
			}
			if !bytes.Equal(body, p.manifest) {
				t.Errorf("Manifest returned other bytes than pushed")
			}
			if mt != string(tt.wantMediaType) {
				t.Errorf("Manifest media type = %q, want %q", mt, tt.wantMediaType)
			}
		})
	}
}

// bareHeaders hides what a HEAD answer says, as some registries do, and
// answers manifests with a generic Content-Type.
func bareHeaders(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.Contains(r.URL.Path, "/manifests/") {
			h.ServeHTTP(w, r)
			return
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, r)
		for k, v := range rec.Header() {
			w.Header()[k] = v
		}
		w.Header().Del("Docker-Content-Digest")
		w.Header().Set("Content-Type", "application/json; charset=utf-8")
		w.WriteHeader(rec.Code)
		w.Write(rec.Body.Bytes())
	})
}

func TestResolveFallsBackToGet(t *testing.T) {
	o := newOrigin(t, bareHeaders(newRegistryHandler()))
	client := newClient(t, nil)
	img := mutate.MediaType(randomImage(t), types.OCIManifestSchema1)
	for _, tt := range []struct {
		name string
		a    artifact
	}{
		{"manifest", img},
		{"index", randomIndex(t)},
	} {
		t.Run(tt.name, func(t *testing.T) {
			p := o.push(t, "test/"+tt.name, "latest", tt.a)
			for _, ref := range []name.Reference{p.tag, p.digest} {
				got, err := client.Resolve(t.Context(), ref)
				if err != nil {
					t.Fatalf("Resolve(%s): %v", ref, err)
				}
				want := puller.Descriptor{Digest: p.desc.Digest, MediaType: p.mediaType, Size: p.desc.Size}
				if got != want {
					t.Errorf("Resolve(%s) = %+v, want %+v", ref, got, want)
				}
			}
			_, mt, err := client.Manifest(t.Context(), p.tag.Context(), p.desc.Digest)
			if err != nil {
				t.Fatal(err)
			}
			if mt != p.mediaType {
				t.Errorf("Manifest media type = %q, want %q (detected from the body)", mt, p.mediaType)
			}
		})
	}
}

// tamper serves every manifest GET with one more byte than stored.
func tamper(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet || !strings.Contains(r.URL.Path, "/manifests/") {
			h.ServeHTTP(w, r)
			return
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, r)
		body := append(rec.Body.Bytes(), '\n')
		for k, v := range rec.Header() {
			w.Header()[k] = v
		}
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		w.WriteHeader(rec.Code)
		w.Write(body)
	})
}

func TestManifestDigestMismatch(t *testing.T) {
	o := newOrigin(t, tamper(newRegistryHandler()))
	client := newClient(t, nil)
	p := o.push(t, "test/tampered", "v1", randomImage(t))

	_, _, err := client.Manifest(t.Context(), p.tag.Context(), p.desc.Digest)
	wantErr(t, err, puller.ErrDigestMismatch, "digest_mismatch")
	if !strings.Contains(err.Error(), p.desc.Digest.String()) {
		t.Errorf("error %q does not name the digest asked for", err)
	}
}

func TestManifestTooLarge(t *testing.T) {
	big := bytes.Repeat([]byte("x"), 5<<20)
	dgst, _, err := v1.SHA256(bytes.NewReader(big))
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name    string
		chunked bool // no Content-Length: the read limit must catch it
	}{
		{"content-length", false},
		{"chunked", true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			o := newOrigin(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path == "/v2/" {
					return
				}
				w.Header().Set("Content-Type", string(types.OCIManifestSchema1))
				w.Header().Set("Docker-Content-Digest", dgst.String())
				if !tt.chunked {
					w.Header().Set("Content-Length", strconv.Itoa(len(big)))
				}
				if r.Method == http.MethodHead {
					return
				}
				w.Write(big[:1024])
				w.(http.Flusher).Flush()
				w.Write(big[1024:])
			}))
			client := newClient(t, nil)
			repo := o.repo(t, "test/big")

			_, _, err := client.Manifest(t.Context(), repo, dgst)
			wantErr(t, err, puller.ErrTooLarge, "too_large")

			if !tt.chunked {
				_, err = client.Resolve(t.Context(), repo.Tag("latest"))
				wantErr(t, err, puller.ErrTooLarge, "too_large")
			}
		})
	}
}

func TestNotFound(t *testing.T) {
	o := newOrigin(t, newRegistryHandler())
	client := newClient(t, nil)
	p := o.push(t, "test/known", "v1", randomImage(t))
	unknown := v1.Hash{Algorithm: "sha256", Hex: strings.Repeat("ab", 32)}
	unknownRepo := o.repo(t, "test/unknown")

	tests := []struct {
		name string
		call func(ctx context.Context) error
	}{
		{"resolve unknown repo", func(ctx context.Context) error {
			_, err := client.Resolve(ctx, unknownRepo.Tag("v1"))
			return err
		}},
		{"resolve unknown tag", func(ctx context.Context) error {
			_, err := client.Resolve(ctx, p.tag.Context().Tag("nope"))
			return err
		}},
		{"manifest unknown digest", func(ctx context.Context) error {
			_, _, err := client.Manifest(ctx, p.tag.Context(), unknown)
			return err
		}},
		{"manifest unknown repo", func(ctx context.Context) error {
			_, _, err := client.Manifest(ctx, unknownRepo, p.desc.Digest)
			return err
		}},
		{"blob unknown digest", func(ctx context.Context) error {
			_, _, err := client.FetchBlob(ctx, p.tag.Context(), unknown, 0)
			return err
		}},
		{"blob unknown digest from offset", func(ctx context.Context) error {
			_, _, err := client.FetchBlob(ctx, p.tag.Context(), unknown, 10)
			return err
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			wantErr(t, tt.call(t.Context()), puller.ErrNotFound, "not_found")
		})
	}
}
