package convert

import (
	"archive/tar"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"fmt"
	"hash"
	"io"
	"os"
	"path"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/containerd/stargz-snapshotter/estargz"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"golang.org/x/sync/errgroup"
)

// Annotation keys of an eStargz layer's descriptor, as the stargz snapshotter
// reads them.
const (
	TOCDigestAnnotation        = estargz.TOCJSONDigestAnnotation
	UncompressedSizeAnnotation = estargz.StoreUncompressedSizeAnnotation
)

// Options tune a conversion. The zero value is valid: no prioritized files,
// one layer per core, gzip's default level.
type Options struct {
	// Prioritize lists the start-up files of the workload, as absolute or
	// relative paths inside the image or path.Match globs ("/usr/lib/*.so*"),
	// in the order the workload reads them. They go first in their layers,
	// before the prefetch landmark, so the snapshotter fetches them at mount.
	Prioritize []string
	// Parallelism is how many layers are converted at once (default: the
	// number of cores).
	Parallelism int
	// CompressionLevel is the gzip level of the chunks (default
	// gzip.DefaultCompression; estargz's own default, BestCompression, is
	// several times slower for a few percent).
	CompressionLevel int
	// ChunkSize is the size of the chunks files are split into (0: estargz's
	// default, 4 MiB).
	ChunkSize int
	// TempDir holds the layers while they are converted (default os.TempDir).
	TempDir string
}

// LayerReport says what the conversion did to one layer.
type LayerReport struct {
	Source      v1.Hash       // the source layer's digest
	Digest      v1.Hash       // the eStargz layer's digest
	TOCDigest   string        // digest of the layer's TOC JSON
	Size        int64         // compressed size of the eStargz layer
	Prioritized []string      // files of Options.Prioritize found in this layer, in order
	Duration    time.Duration // time to convert this layer
}

// Report says what Image did.
type Report struct {
	Layers   []LayerReport
	Duration time.Duration
}

// Prioritized counts the prioritized files over all layers.
func (r Report) Prioritized() int {
	n := 0
	for _, l := range r.Layers {
		n += len(l.Prioritized)
	}
	return n
}

// Image converts every layer of src to eStargz, in parallel, and returns the
// new image: same config (history, environment, entrypoint), new layers and
// diff IDs, each layer annotated with TOCDigestAnnotation and
// UncompressedSizeAnnotation. The layers live in temporary files until the
// returned cleanup is called; call it once the image has been written.
func Image(ctx context.Context, src v1.Image, o Options) (img v1.Image, rep Report, cleanup func(), err error) {
	start := time.Now()
	if err := validatePatterns(o.Prioritize); err != nil {
		return nil, Report{}, nil, err
	}
	if o.Parallelism <= 0 {
		o.Parallelism = runtime.NumCPU()
	}
	if o.CompressionLevel == 0 {
		o.CompressionLevel = gzip.DefaultCompression
	}
	layers, err := src.Layers()
	if err != nil {
		return nil, Report{}, nil, fmt.Errorf("source layers: %w", err)
	}
	mt, err := src.MediaType()
	if err != nil {
		return nil, Report{}, nil, fmt.Errorf("source media type: %w", err)
	}
	layerType := types.OCILayer
	if mt == types.DockerManifestSchema2 {
		layerType = types.DockerLayer
	}
	cfg, err := src.ConfigFile()
	if err != nil {
		return nil, Report{}, nil, fmt.Errorf("source config: %w", err)
	}

	tmp, err := os.MkdirTemp(o.TempDir, "thaw-convert-")
	if err != nil {
		return nil, Report{}, nil, fmt.Errorf("temporary directory: %w", err)
	}
	cleanup = func() { os.RemoveAll(tmp) }
	defer func() {
		if err != nil {
			cleanup()
		}
	}()

	out := make([]*layer, len(layers))
	rep.Layers = make([]LayerReport, len(layers))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(o.Parallelism)
	// Each layer's own build splits it among the cores the layers leave.
	perLayer := max(1, runtime.NumCPU()/min(o.Parallelism, max(1, len(layers))))
	for i, l := range layers {
		g.Go(func() error {
			t0 := time.Now()
			el, err := convertLayer(gctx, l, layerType, tmp, o, perLayer)
			if err != nil {
				d, _ := l.Digest()
				return fmt.Errorf("layer %d (%s): %w", i, d, err)
			}
			out[i] = el
			srcDigest, _ := l.Digest()
			rep.Layers[i] = LayerReport{Source: srcDigest, Digest: el.digest, TOCDigest: el.tocDigest,
				Size: el.size, Prioritized: el.prioritized, Duration: time.Since(t0)}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, Report{}, nil, err
	}

	// Start from the source's config without its layers; Append adds the
	// new ones (and their diff IDs) and the history is put back after.
	base := cfg.DeepCopy()
	base.RootFS.DiffIDs = nil
	base.History = nil
	img, err = mutate.ConfigFile(empty.Image, base)
	if err != nil {
		return nil, Report{}, nil, err
	}
	img = mutate.MediaType(img, mt)
	if mt == types.DockerManifestSchema2 {
		img = mutate.ConfigMediaType(img, types.DockerConfigJSON)
	}
	adds := make([]mutate.Addendum, len(out))
	for i, el := range out {
		ann := map[string]string{
			TOCDigestAnnotation:        el.tocDigest,
			UncompressedSizeAnnotation: strconv.FormatInt(el.uncompressedSize, 10),
		}
		cl, err := partial.CompressedToLayer(el)
		if err != nil {
			return nil, Report{}, nil, err
		}
		adds[i] = mutate.Addendum{Layer: cl, Annotations: ann, MediaType: layerType}
	}
	if img, err = mutate.Append(img, adds...); err != nil {
		return nil, Report{}, nil, err
	}
	nc, err := img.ConfigFile()
	if err != nil {
		return nil, Report{}, nil, err
	}
	nc = nc.DeepCopy()
	nc.History = cfg.History
	if img, err = mutate.ConfigFile(img, nc); err != nil {
		return nil, Report{}, nil, err
	}
	rep.Duration = time.Since(start)
	return img, rep, cleanup, nil
}

// validatePatterns rejects globs path.Match cannot parse, before any work.
func validatePatterns(patterns []string) error {
	for _, p := range patterns {
		if _, err := path.Match(cleanName(p), ""); err != nil {
			return fmt.Errorf("prioritized file %q: %w", p, err)
		}
	}
	return nil
}

// cleanName is a tar entry name or a pattern as estargz compares them:
// relative, without "./" or a trailing slash.
func cleanName(n string) string {
	return strings.TrimPrefix(path.Clean("/"+n), "/")
}

// layer is a converted layer in a temporary file: a partial.CompressedLayer
// whose digests are known without reading it again.
type layer struct {
	file                   string
	digest, diffID         v1.Hash
	size, uncompressedSize int64
	tocDigest              string
	mediaType              types.MediaType
	prioritized            []string
}

var _ partial.CompressedLayer = (*layer)(nil)

func (l *layer) Digest() (v1.Hash, error)            { return l.digest, nil }
func (l *layer) DiffID() (v1.Hash, error)            { return l.diffID, nil }
func (l *layer) Size() (int64, error)                { return l.size, nil }
func (l *layer) MediaType() (types.MediaType, error) { return l.mediaType, nil }
func (l *layer) Compressed() (io.ReadCloser, error)  { return os.Open(l.file) }

// convertLayer writes l's tar to a temporary file, finds the prioritized
// files in it, builds the eStargz blob into another file and hashes it on
// the way.
func convertLayer(ctx context.Context, l v1.Layer, mt types.MediaType, dir string, o Options, workers int) (*layer, error) {
	rc, err := l.Uncompressed()
	if err != nil {
		return nil, fmt.Errorf("read: %w", err)
	}
	tarFile, err := os.CreateTemp(dir, "src-*.tar")
	if err != nil {
		rc.Close()
		return nil, err
	}
	defer func() {
		tarFile.Close()
		os.Remove(tarFile.Name())
	}()
	n, err := io.Copy(tarFile, contextReader{ctx, rc})
	rc.Close()
	if err != nil {
		return nil, fmt.Errorf("read: %w", err)
	}
	prio, err := matchPrioritized(io.NewSectionReader(tarFile, 0, n), o.Prioritize)
	if err != nil {
		return nil, err
	}
	opts := []estargz.Option{
		estargz.WithContext(ctx),
		estargz.WithCompressionLevel(o.CompressionLevel),
		estargz.WithParallelism(workers),
	}
	if len(prio) > 0 {
		opts = append(opts, estargz.WithPrioritizedFiles(prio))
	}
	if o.ChunkSize > 0 {
		opts = append(opts, estargz.WithChunkSize(o.ChunkSize))
	}
	blob, err := estargz.Build(io.NewSectionReader(tarFile, 0, n), opts...)
	if err != nil {
		return nil, fmt.Errorf("build eStargz: %w", err)
	}
	defer blob.Close()
	outFile, err := os.CreateTemp(dir, "estargz-*.tar.gz")
	if err != nil {
		return nil, err
	}
	defer outFile.Close()
	h := sha256.New()
	size, err := io.Copy(io.MultiWriter(outFile, h), contextReader{ctx, blob})
	if err != nil {
		return nil, fmt.Errorf("build eStargz: %w", err)
	}
	if err := outFile.Close(); err != nil {
		return nil, err
	}
	usize, err := blob.UncompressedSize()
	if err != nil {
		return nil, fmt.Errorf("build eStargz: %w", err)
	}
	diffID, err := v1.NewHash(blob.DiffID().String())
	if err != nil {
		return nil, err
	}
	return &layer{
		file:             outFile.Name(),
		digest:           hashOf(h),
		diffID:           diffID,
		size:             size,
		uncompressedSize: usize,
		tocDigest:        blob.TOCDigest().String(),
		mediaType:        mt,
		prioritized:      prio,
	}, nil
}

func hashOf(h hash.Hash) v1.Hash {
	return v1.Hash{Algorithm: "sha256", Hex: fmt.Sprintf("%x", h.Sum(nil))}
}

// matchPrioritized returns the entries of the tar that patterns name, in the
// order of patterns (a glob's matches in the order of the tar), each once.
// Directories are left out: estargz moves a file's parents with it.
func matchPrioritized(tarball io.Reader, patterns []string) ([]string, error) {
	if len(patterns) == 0 {
		return nil, nil
	}
	var names []string
	tr := tar.NewReader(tarball)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("read tar: %w", err)
		}
		if h.Typeflag != tar.TypeDir {
			names = append(names, cleanName(h.Name))
		}
	}
	seen := map[string]bool{}
	var out []string
	for _, p := range patterns {
		p = cleanName(p)
		for _, n := range names {
			if ok, _ := path.Match(p, n); (ok || n == p) && !seen[n] {
				seen[n] = true
				out = append(out, n)
			}
		}
	}
	return out, nil
}

// contextReader stops a long copy when ctx is done.
type contextReader struct {
	ctx context.Context
	r   io.Reader
}

func (c contextReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
