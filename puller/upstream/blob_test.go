package upstream_test

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/thaw-dev/thaw/puller"
)

func layerOf(t *testing.T, img v1.Image) (v1.Hash, []byte) {
	t.Helper()
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	dgst, err := layers[0].Digest()
	if err != nil {
		t.Fatal(err)
	}
	rc, err := layers[0].Compressed()
	if err != nil {
		t.Fatal(err)
	}
	return dgst, readAll(t, rc)
}

func offsets(size int) []int64 {
	return []int64{0, 1, int64(size / 2), int64(size - 1), int64(size)}
}

// TestFetchBlobFromRegistry runs against go-containerregistry's registry,
// which answers open-ended ranges with 416: FetchBlob must learn the size and
// ask for a closed range.
func TestFetchBlobFromRegistry(t *testing.T) {
	o := newOrigin(t, newRegistryHandler())
	client := newClient(t, nil)
	img := randomImage(t)
	p := o.push(t, "test/blobs", "v1", img)
	dgst, blob := layerOf(t, img)

	for _, off := range offsets(len(blob)) {
		t.Run(fmt.Sprintf("offset %d", off), func(t *testing.T) {
			rc, size, err := client.FetchBlob(t.Context(), p.tag.Context(), dgst, off)
			if err != nil {
				t.Fatal(err)
			}
			got := readAll(t, rc)
			if size != int64(len(blob)) {
				t.Errorf("size = %d, want %d", size, len(blob))
			}
			if !bytes.Equal(got, blob[off:]) {
				t.Errorf("got %d bytes, want the %d from offset %d", len(got), len(blob)-int(off), off)
			}
		})
	}

	t.Run("offset past the end", func(t *testing.T) {
		_, _, err := client.FetchBlob(t.Context(), p.tag.Context(), dgst, int64(len(blob))+1)
		if !errors.Is(err, puller.ErrSizeMismatch) {
			t.Fatalf("got %v, want ErrSizeMismatch", err)
		}
	})
	t.Run("negative offset", func(t *testing.T) {
		if _, _, err := client.FetchBlob(t.Context(), p.tag.Context(), dgst, -1); err == nil {
			t.Fatal("want an error")
		}
	})
}

// blobOrigin serves one blob under any repository, answering ranges the way
// mode says.
func blobOrigin(t *testing.T, blob []byte, mode string) *origin {
	t.Helper()
	storage := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(blob))
	}))
	t.Cleanup(storage.Close)

	return newOrigin(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v2/" {
			return
		}
		if !strings.Contains(r.URL.Path, "/blobs/") {
			http.NotFound(w, r)
			return
		}
		switch mode {
		case "serve content": // honours open-ended ranges with 206
			http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(blob))
		case "redirect": // to blob storage, as S3 or GCS backends do
			http.Redirect(w, r, storage.URL+"/some/bucket/object", http.StatusTemporaryRedirect)
		case "ignore range":
			w.Header().Set("Content-Length", strconv.Itoa(len(blob)))
			w.Write(blob)
		case "no size":
			w.Write(blob[:1])
			w.(http.Flusher).Flush()
			w.Write(blob[1:])
		case "wrong start":
			w.Header().Set("Content-Range", fmt.Sprintf("bytes 0-%d/%d", len(blob)-1, len(blob)))
			w.WriteHeader(http.StatusPartialContent)
			w.Write(blob)
		case "unknown total":
			start, _ := strconv.Atoi(strings.TrimSuffix(strings.TrimPrefix(r.Header.Get("Range"), "bytes="), "-"))
			w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/*", start, len(blob)-1))
			w.WriteHeader(http.StatusPartialContent)
			w.Write(blob[start:])
		case "gzip":
			w.Header().Set("Content-Encoding", "gzip")
			w.Header().Set("Content-Length", strconv.Itoa(len(blob)))
			w.Write(blob)
		default:
			t.Errorf("unknown mode %q", mode)
		}
	}))
}

func TestFetchBlobRanges(t *testing.T) {
	blob := make([]byte, 100_000)
	rand.Read(blob)
	dgst, _, err := v1.SHA256(bytes.NewReader(blob))
	if err != nil {
		t.Fatal(err)
	}

	for _, mode := range []string{"serve content", "redirect", "ignore range"} {
		t.Run(mode, func(t *testing.T) {
			o := blobOrigin(t, blob, mode)
			client := newClient(t, nil)
			for _, off := range offsets(len(blob)) {
				rc, size, err := client.FetchBlob(t.Context(), o.repo(t, "test/blob"), dgst, off)
				if err != nil {
					t.Fatalf("offset %d: %v", off, err)
				}
				if got := readAll(t, rc); !bytes.Equal(got, blob[off:]) {
					t.Errorf("offset %d: got %d bytes, want the %d from the offset", off, len(got), len(blob)-int(off))
				}
				if size != int64(len(blob)) {
					t.Errorf("offset %d: size = %d, want %d", off, size, len(blob))
				}
			}
		})
	}

	for _, tt := range []struct {
		mode   string
		offset int64
		want   string
	}{
		{"no size", 0, "size"},
		{"wrong start", 10, "asked from 10"},
		{"unknown total", 10, "size"},
		{"gzip", 0, "Content-Encoding"},
	} {
		t.Run(tt.mode, func(t *testing.T) {
			o := blobOrigin(t, blob, tt.mode)
			client := newClient(t, nil)
			rc, _, err := client.FetchBlob(t.Context(), o.repo(t, "test/blob"), dgst, tt.offset)
			if err == nil {
				rc.Close()
				t.Fatal("want an error")
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q does not mention %q", err, tt.want)
			}
			if upstream := errors.Is(err, puller.ErrUnavailable); upstream {
				t.Errorf("a bad answer is not the origin being unavailable: %v", err)
			}
		})
	}
}

// TestFetchBlobCutShort: the origin announces more than it sends; the read
// error says the origin went away, so the caller can resume.
func TestFetchBlobCutShort(t *testing.T) {
	o := newOrigin(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v2/" {
			return
		}
		conn, buf, err := w.(http.Hijacker).Hijack()
		if err != nil {
			t.Error(err)
			return
		}
		defer conn.Close()
		fmt.Fprint(buf, "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
		buf.Write(make([]byte, 10))
		buf.Flush()
	}))
	client := newClient(t, nil)
	dgst := v1.Hash{Algorithm: "sha256", Hex: strings.Repeat("cd", 32)}

	rc, size, err := client.FetchBlob(t.Context(), o.repo(t, "test/short"), dgst, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	if size != 1000 {
		t.Errorf("size = %d, want 1000", size)
	}
	n, err := io.Copy(io.Discard, bufio.NewReader(rc))
	if n != 10 {
		t.Errorf("read %d bytes, want 10", n)
	}
	wantErr(t, err, puller.ErrUnavailable, "connection")
}
