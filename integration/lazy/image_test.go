//go:build e2e

package lazy

import (
	"encoding/json"
	"os"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// tamperTOCAnnotation pushes src's manifest as dst with layer i's TOC digest
// annotation replaced by another digest; the blobs stay as they are.
func tamperTOCAnnotation(t *testing.T, src, dst string, i int) {
	t.Helper()
	sr, err := name.ParseReference(src, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	desc, err := remote.Get(sr)
	if err != nil {
		t.Fatal(err)
	}
	var m v1.Manifest
	if err := json.Unmarshal(desc.Manifest, &m); err != nil {
		t.Fatal(err)
	}
	if m.Layers[i].Annotations[tocAnnotation] == "" {
		t.Fatalf("layer %d of %s has no TOC digest annotation", i, src)
	}
	m.Layers[i].Annotations[tocAnnotation] = "sha256:" + strings.Repeat("ab", 32)
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	dr, err := name.ParseReference(dst, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Put(dr, rawManifest{b, desc.MediaType}); err != nil {
		t.Fatal(err)
	}
}

// tocAnnotation is estargz's TOC digest annotation key.
const tocAnnotation = "containerd.io/snapshot/stargz/toc.digest"

type rawManifest struct {
	b  []byte
	mt types.MediaType
}

func (r rawManifest) RawManifest() ([]byte, error)        { return r.b, nil }
func (r rawManifest) MediaType() (types.MediaType, error) { return r.mt, nil }

// grepLog returns the lines of the log at path that contain every one of subs.
func grepLog(path string, subs ...string) []string {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	var out []string
	for line := range strings.SplitSeq(string(b), "\n") {
		all := true
		for _, s := range subs {
			all = all && strings.Contains(line, s)
		}
		if all {
			out = append(out, line)
		}
	}
	return out
}
