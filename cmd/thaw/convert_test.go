package main

import (
	"context"
	"io"
	"log"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/thaw-dev/thaw/lazyload/convert"
)

// TestConvertCommand: thaw convert reads, converts and pushes, reports the
// time it took, and the pushed layers carry the TOC digest annotation.
func TestConvertCommand(t *testing.T) {
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")
	img, err := random.Image(4096, 2)
	if err != nil {
		t.Fatal(err)
	}
	src, _ := name.ParseReference(host+"/app:v1", name.Insecure)
	if err := remote.Write(src, img); err != nil {
		t.Fatal(err)
	}
	list := filepath.Join(t.TempDir(), "startup.txt")
	if err := os.WriteFile(list, []byte("# start-up files\n/no/such/file\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := thaw(context.Background(), "convert", host+"/app:v1", host+"/app:v1-esgz", "--insecure", "--prioritize-from", list)
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if !regexp.MustCompile(`converted \S+ to \S+ in [0-9.]+s: 2 layers`).MatchString(out) {
		t.Errorf("output does not report the conversion and its time:\n%s", out)
	}
	dst, _ := name.ParseReference(host+"/app:v1-esgz", name.Insecure)
	got, err := remote.Image(dst)
	if err != nil {
		t.Fatal(err)
	}
	m, err := got.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	for i, l := range m.Layers {
		if l.Annotations[convert.TOCDigestAnnotation] == "" {
			t.Errorf("layer %d has no TOC digest annotation", i)
		}
	}

	if out, err := thaw(context.Background(), "convert", host+"/app:v1", host+"/x:y", "--prioritize-from", "/no/such/list"); err == nil || !strings.Contains(err.Error(), "--prioritize-from") {
		t.Errorf("missing list: err = %v\n%s", err, out)
	}
}
