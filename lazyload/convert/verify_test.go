package convert_test

import (
	"bytes"
	"compress/gzip"
	"context"
	"io"
	"strings"
	"testing"

	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/opencontainers/go-digest"

	"github.com/thaw-dev/thaw/lazyload/convert"
)

// convertedLayer returns the runtime layer of testImage as eStargz and its
// TOC digest.
func convertedLayer(t testing.TB) ([]byte, string) {
	t.Helper()
	img, rep, cleanup, err := convert.Image(context.Background(), testImage(t), convert.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer cleanup()
	layers, _ := img.Layers()
	return blobOf(t, layers[0]), rep.Layers[0].TOCDigest
}

func section(b []byte) *io.SectionReader {
	return io.NewSectionReader(bytes.NewReader(b), 0, int64(len(b)))
}

// TestVerifyRefusesCorruptTOC: bytes of the TOC changed in transit; the
// blob is refused, whatever the damage.
func TestVerifyRefusesCorruptTOC(t *testing.T) {
	blob, toc := convertedLayer(t)
	tocOff, _, err := estargz.OpenFooter(section(blob))
	if err != nil {
		t.Fatal(err)
	}
	for _, at := range []int64{tocOff + 20, tocOff + (int64(len(blob))-tocOff)/2, int64(len(blob)) - 60} {
		bad := bytes.Clone(blob)
		bad[at] ^= 0xff
		err := convert.Verify(section(bad), toc)
		if err == nil {
			t.Errorf("byte %d of the TOC flipped: accepted", at)
			continue
		}
		t.Logf("byte %d flipped: %v", at, err)
	}
}

// TestVerifyRefusesOtherTOC: a well-formed eStargz blob whose TOC is not
// the one the manifest names (a layer swapped for another).
func TestVerifyRefusesOtherTOC(t *testing.T) {
	blob, _ := convertedLayer(t)
	errorsIs(t, convert.Verify(section(blob), digest.FromString("another TOC").String()), convert.ErrTOCDigest)
	if err := convert.Verify(section(blob), "not-a-digest"); err == nil || !strings.Contains(err.Error(), "not-a-digest") {
		t.Errorf("malformed annotation: err = %v", err)
	}
}

// TestVerifyRefusesChunkWithWrongDigest: the TOC (and so the manifest's TOC
// digest) says one thing about a chunk and the chunk's bytes another. The
// blob is rebuilt with a TOC recording a different digest for the first chunk of
// libbig.so.1, as a registry serving a tampered chunk would look.
func TestVerifyRefusesChunkWithWrongDigest(t *testing.T) {
	blob, _ := convertedLayer(t)
	tocOff, _, err := estargz.OpenFooter(section(blob))
	if err != nil {
		t.Fatal(err)
	}
	footer := (&estargz.GzipDecompressor{}).FooterSize()
	toc, _, err := (&estargz.GzipDecompressor{}).ParseTOC(io.NewSectionReader(bytes.NewReader(blob), tocOff, int64(len(blob))-footer-tocOff))
	if err != nil {
		t.Fatal(err)
	}
	tampered := false
	for _, e := range toc.Entries {
		if e.Name == "usr/lib/libbig.so.1" && e.ChunkDigest != "" {
			e.ChunkDigest = digest.FromString("something else").String()
			tampered = true
			break
		}
	}
	if !tampered {
		t.Fatal("libbig.so.1 has no chunk digest to tamper with")
	}
	var out bytes.Buffer
	out.Write(blob[:tocOff])
	newTOC, err := estargz.NewGzipCompressorWithLevel(gzip.DefaultCompression).WriteTOCAndFooter(&out, tocOff, toc, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = convert.Verify(section(out.Bytes()), newTOC.String())
	errorsIs(t, err, convert.ErrChunkDigest)
	if err != nil && !strings.Contains(err.Error(), "usr/lib/libbig.so.1") {
		t.Errorf("error does not name the file: %v", err)
	}
}

// TestVerifyRefusesPlainLayer: a gzip layer that is not eStargz.
func TestVerifyRefusesPlainLayer(t *testing.T) {
	plain := blobOf(t, tarLayer(t, file{name: "etc/hostname", data: "plain"}))
	errorsIs(t, convert.Verify(section(plain), digest.FromString("x").String()), convert.ErrNotEStargz)
}

// FuzzVerify: whatever a registry sends, Verify returns an error or nil and
// never panics or hangs.
func FuzzVerify(f *testing.F) {
	blob, toc := convertedLayer(f)
	f.Add(blob, toc)
	f.Add(blob[:len(blob)/2], toc)
	f.Add([]byte("not a layer"), toc)
	f.Fuzz(func(t *testing.T, b []byte, toc string) {
		_ = convert.Verify(section(b), toc)
	})
}
