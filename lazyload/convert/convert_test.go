package convert_test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"io"
	"log"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/thaw-dev/thaw/lazyload/convert"
)

type file struct {
	name string
	data string // "" for a directory when name ends in /
}

func tarLayer(t testing.TB, files ...file) v1.Layer {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, f := range files {
		h := &tar.Header{Name: f.name, Mode: 0o644, Size: int64(len(f.data)), Typeflag: tar.TypeReg, ModTime: time.Unix(1, 0)}
		if strings.HasSuffix(f.name, "/") {
			h.Typeflag, h.Mode, h.Size = tar.TypeDir, 0o755, 0
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write([]byte(f.data)); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	b := buf.Bytes()
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil })
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// testImage has two layers: a "runtime" with a library directory and an
// "app" layer; big files span several chunks.
func testImage(t testing.TB) v1.Image {
	t.Helper()
	big := strings.Repeat("0123456789abcdef", 40<<10) // 640 KiB, several 64 KiB chunks
	runtimeLayer := tarLayer(t,
		file{name: "usr/"}, file{name: "usr/lib/"},
		file{name: "usr/lib/libbig.so.1", data: big},
		file{name: "usr/lib/libsmall.so.2", data: "small library"},
		file{name: "usr/lib/unused.txt", data: "never read at start-up"},
		file{name: "usr/bin/", data: ""},
		file{name: "usr/bin/python", data: "#!interpreter"},
	)
	appLayer := tarLayer(t, file{name: "app/"}, file{name: "app/main.py", data: "print('ready')"}, file{name: "app/data.bin", data: big[:100000]})
	img, err := mutate.Append(empty.Image,
		mutate.Addendum{Layer: runtimeLayer, History: v1.History{CreatedBy: "runtime"}},
		mutate.Addendum{Layer: appLayer, History: v1.History{CreatedBy: "app"}})
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cfg = cfg.DeepCopy()
	cfg.Config.Entrypoint = []string{"/usr/bin/python", "/app/main.py"}
	img, err = mutate.ConfigFile(img, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

func blobOf(t testing.TB, l v1.Layer) []byte {
	t.Helper()
	rc, err := l.Compressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// tocOrder returns the TOC's regular files and landmarks in blob order.
func tocOrder(t testing.TB, blob []byte) []string {
	t.Helper()
	r, err := estargz.Open(io.NewSectionReader(bytes.NewReader(blob), 0, int64(len(blob))))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	var walk func(e *estargz.TOCEntry, prefix string)
	type at struct {
		name string
		off  int64
	}
	var all []at
	walk = func(e *estargz.TOCEntry, prefix string) {
		e.ForeachChild(func(base string, c *estargz.TOCEntry) bool {
			if c.Type == "dir" {
				walk(c, prefix+base+"/")
			} else if c.Type == "reg" {
				all = append(all, at{prefix + base, c.Offset})
			}
			return true
		})
	}
	root, _ := r.Lookup("")
	walk(root, "")
	slices.SortFunc(all, func(a, b at) int { return int(a.off - b.off) })
	for _, a := range all {
		names = append(names, a.name)
	}
	return names
}

func TestImageConvertsLayersWithPrioritizedFilesFirst(t *testing.T) {
	src := testImage(t)
	img, rep, cleanup, err := convert.Image(context.Background(), src, convert.Options{
		Prioritize: []string{"/usr/bin/python", "/usr/lib/libsmall.so.*", "app/main.py", "/not/in/any/layer"},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer cleanup()

	if len(rep.Layers) != 2 {
		t.Fatalf("report has %d layers, want 2", len(rep.Layers))
	}
	if got, want := rep.Layers[0].Prioritized, []string{"usr/bin/python", "usr/lib/libsmall.so.2"}; !slices.Equal(got, want) {
		t.Errorf("runtime layer prioritized %v, want %v (the order given)", got, want)
	}
	if got, want := rep.Layers[1].Prioritized, []string{"app/main.py"}; !slices.Equal(got, want) {
		t.Errorf("app layer prioritized %v, want %v", got, want)
	}

	m, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	srcCfg, _ := src.ConfigFile()
	if !slices.Equal(cfg.Config.Entrypoint, srcCfg.Config.Entrypoint) {
		t.Errorf("entrypoint %v, want the source's %v", cfg.Config.Entrypoint, srcCfg.Config.Entrypoint)
	}
	if len(cfg.History) != 2 || cfg.History[0].CreatedBy != "runtime" || cfg.History[1].CreatedBy != "app" {
		t.Errorf("history not kept: %+v", cfg.History)
	}
	srcLayers, _ := src.Layers()
	for i, l := range layers {
		desc := m.Layers[i]
		blob := blobOf(t, l)
		if d, _ := l.Digest(); d != desc.Digest || d != rep.Layers[i].Digest {
			t.Errorf("layer %d: digest %s, manifest %s, report %s", i, d, desc.Digest, rep.Layers[i].Digest)
		}
		toc := desc.Annotations[convert.TOCDigestAnnotation]
		if toc == "" || toc != rep.Layers[i].TOCDigest {
			t.Errorf("layer %d: TOC annotation %q, report %q", i, toc, rep.Layers[i].TOCDigest)
		}
		if err := convert.Verify(io.NewSectionReader(bytes.NewReader(blob), 0, int64(len(blob))), toc); err != nil {
			t.Errorf("layer %d does not verify: %v", i, err)
		}
		// The uncompressed size annotation is the size of the diff.
		zr, err := gzip.NewReader(bytes.NewReader(blob))
		if err != nil {
			t.Fatal(err)
		}
		n, err := io.Copy(io.Discard, zr)
		if err != nil {
			t.Fatal(err)
		}
		if got := desc.Annotations[convert.UncompressedSizeAnnotation]; got != strconv.FormatInt(n, 10) {
			t.Errorf("layer %d: uncompressed size annotation %q, the layer has %d bytes", i, got, n)
		}
		if diffID, _ := l.DiffID(); cfg.RootFS.DiffIDs[i] != diffID {
			t.Errorf("layer %d: config diff ID %s, layer %s", i, cfg.RootFS.DiffIDs[i], diffID)
		}
		if desc.MediaType != types.DockerLayer && desc.MediaType != types.OCILayer {
			t.Errorf("layer %d media type %s", i, desc.MediaType)
		}
		// Every file of the source is in the eStargz layer, same bytes.
		assertSameFiles(t, srcLayers[i], blob)
	}

	order := tocOrder(t, blobOf(t, layers[0]))
	landmark := slices.Index(order, estargz.PrefetchLandmark)
	if landmark != 2 || order[0] != "usr/bin/python" || order[1] != "usr/lib/libsmall.so.2" {
		t.Errorf("runtime layer order %v: want usr/bin/python, usr/lib/libsmall.so.2, then %s", order, estargz.PrefetchLandmark)
	}
}

func TestImageWithoutPrioritizedFilesPrefetchesNothing(t *testing.T) {
	img, _, cleanup, err := convert.Image(context.Background(), testImage(t), convert.Options{Parallelism: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer cleanup()
	layers, _ := img.Layers()
	for i, l := range layers {
		if order := tocOrder(t, blobOf(t, l)); !slices.Contains(order, estargz.NoPrefetchLandmark) {
			t.Errorf("layer %d: no %s in %v", i, estargz.NoPrefetchLandmark, order)
		}
	}
}

func TestImageRejectsBadPattern(t *testing.T) {
	_, _, _, err := convert.Image(context.Background(), testImage(t), convert.Options{Prioritize: []string{"usr/lib/[a-"}})
	if err == nil || !strings.Contains(err.Error(), "usr/lib/[a-") {
		t.Fatalf("err = %v, want one naming the bad pattern", err)
	}
}

// TestCopy converts an image between two repositories of a registry served
// in process and checks what a client of the registry sees.
func TestCopy(t *testing.T) {
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")
	srcRef, _ := name.ParseReference(host+"/app:plain", name.Insecure)
	if err := remote.Write(srcRef, testImage(t)); err != nil {
		t.Fatal(err)
	}
	rep, err := convert.Copy(context.Background(), host+"/app:plain", host+"/app:esgz", true,
		convert.Options{Prioritize: []string{"app/main.py"}})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Duration <= 0 || rep.Prioritized() != 1 {
		t.Errorf("report %+v: want a duration and 1 prioritized file", rep)
	}
	dstRef, _ := name.ParseReference(host+"/app:esgz", name.Insecure)
	img, err := remote.Image(dstRef)
	if err != nil {
		t.Fatal(err)
	}
	m, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	layers, _ := img.Layers()
	for i, desc := range m.Layers {
		blob := blobOf(t, layers[i])
		if err := convert.Verify(io.NewSectionReader(bytes.NewReader(blob), 0, int64(len(blob))), desc.Annotations[convert.TOCDigestAnnotation]); err != nil {
			t.Errorf("pushed layer %d: %v", i, err)
		}
	}
	if _, err := convert.Copy(context.Background(), host+"/missing:tag", host+"/x:y", true, convert.Options{}); err == nil || !strings.Contains(err.Error(), "missing") {
		t.Errorf("copy of a missing image: err = %v", err)
	}
}

// assertSameFiles compares the regular files of a source layer with those
// of its eStargz conversion.
func assertSameFiles(t *testing.T, src v1.Layer, blob []byte) {
	t.Helper()
	want := map[string]string{}
	rc, err := src.Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if h.Typeflag == tar.TypeReg {
			b, _ := io.ReadAll(tr)
			want[h.Name] = string(b)
		}
	}
	r, err := estargz.Open(io.NewSectionReader(bytes.NewReader(blob), 0, int64(len(blob))))
	if err != nil {
		t.Fatal(err)
	}
	for n, data := range want {
		f, err := r.OpenFile(n)
		if err != nil {
			t.Errorf("%s: %v", n, err)
			continue
		}
		b, err := io.ReadAll(io.NewSectionReader(f, 0, f.Size()))
		if err != nil || string(b) != data {
			t.Errorf("%s: %d bytes (%v), want %d", n, len(b), err, len(data))
		}
	}
}

// errorsIs is errors.Is with a message for the test log.
func errorsIs(t *testing.T, err, target error) {
	t.Helper()
	if !errors.Is(err, target) {
		t.Errorf("err = %v, want %v", err, target)
	}
}
