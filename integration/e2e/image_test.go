//go:build e2e

package e2e

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"net/http"
	"os"
	"runtime"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// dataSize is the size of the image's data layer: random, so it does not
// compress and the byte counters have something to count.
const dataSize = 2 << 20

// testImage is a small runnable image pushed to a test's registry: a layer
// with a static entrypoint, and a layer of random data whose digest the
// entrypoint prints.
type testImage struct {
	ref    string           // registry/repo:tag, as containerd names it
	digest string           // the manifest's digest
	blobs  []string         // config and layer digests
	sizes  map[string]int64 // blob digest → size
	layers []string         // layer digests
	size   int64            // bytes of config and layers, as stored in the registry
	output string           // the line the container prints when it runs
}

func pushTestImage(t *testing.T, registry string) testImage {
	t.Helper()
	hello, err := os.ReadFile(helloBin)
	if err != nil {
		t.Fatal(err)
	}
	data := make([]byte, dataSize)
	if _, err := rand.Read(data); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(data)

	img, err := mutate.ConfigFile(mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON), &v1.ConfigFile{
		OS:           "linux",
		Architecture: runtime.GOARCH,
		Config: v1.Config{
			Entrypoint: []string{"/bin/hello"},
			Env:        []string{"PATH=/bin"},
		},
		RootFS: v1.RootFS{Type: "layers"},
	})
	if err != nil {
		t.Fatal(err)
	}
	img, err = mutate.Append(img,
		mutate.Addendum{
			Layer:   tarLayer(t, tarEntry{"bin/", nil, 0o755}, tarEntry{"bin/hello", hello, 0o755}),
			History: v1.History{CreatedBy: "thaw e2e: static entrypoint"},
		},
		mutate.Addendum{
			Layer: tarLayer(t,
				tarEntry{"usr/", nil, 0o755},
				tarEntry{"usr/share/", nil, 0o755},
				tarEntry{"usr/share/thaw-e2e/", nil, 0o755},
				tarEntry{"usr/share/thaw-e2e/data.bin", data, 0o644},
				// runc needs mount points for the rootfs it sets up.
				tarEntry{"proc/", nil, 0o555}, tarEntry{"sys/", nil, 0o555}, tarEntry{"dev/", nil, 0o755},
				tarEntry{"etc/", nil, 0o755}, tarEntry{"tmp/", nil, 0o1777},
			),
			History: v1.History{CreatedBy: "thaw e2e: data"},
		},
	)
	if err != nil {
		t.Fatal(err)
	}

	ref, err := name.NewTag(registry+"/e2e/hello:v1", name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	if err := remote.Write(ref, img, remote.WithContext(ctx), remote.WithTransport(tr)); err != nil {
		t.Fatalf("push %s: %v", ref, err)
	}

	ti := testImage{ref: ref.Name(), sizes: map[string]int64{}, output: "thaw-e2e ready data=" + hex.EncodeToString(sum[:])}
	dgst, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	ti.digest = dgst.String()
	cfgName, err := img.ConfigName()
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := img.RawConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	ti.blobs = append(ti.blobs, cfgName.String())
	ti.sizes[cfgName.String()] = int64(len(cfg))
	ti.size += int64(len(cfg))
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range layers {
		d, err := l.Digest()
		if err != nil {
			t.Fatal(err)
		}
		n, err := l.Size()
		if err != nil {
			t.Fatal(err)
		}
		ti.layers = append(ti.layers, d.String())
		ti.blobs = append(ti.blobs, d.String())
		ti.sizes[d.String()] = n
		ti.size += n
	}
	t.Logf("pushed %s (%s): %d layers, %d bytes of blobs", ti.ref, ti.digest, len(ti.layers), ti.size)
	return ti
}

type tarEntry struct {
	name string
	body []byte // nil for a directory
	mode int64
}

// tarLayer is a gzip-compressed OCI layer of the entries, in order.
func tarLayer(t *testing.T, entries ...tarEntry) v1.Layer {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	modTime := time.Unix(1700000000, 0)
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Mode: e.mode, ModTime: modTime, Typeflag: tar.TypeDir}
		if e.body != nil {
			h.Typeflag, h.Size = tar.TypeReg, int64(len(e.body))
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(e.body); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	b := buf.Bytes()
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(b)), nil
	}, tarball.WithMediaType(types.OCILayer))
	if err != nil {
		t.Fatal(err)
	}
	return l
}
