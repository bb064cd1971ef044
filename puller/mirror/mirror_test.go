package mirror_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"github.com/thaw-dev/thaw/metrics/metricstest"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"go.uber.org/goleak"

	"github.com/thaw-dev/thaw/puller"
	"github.com/thaw-dev/thaw/puller/catalog"
	"github.com/thaw-dev/thaw/puller/fetch"
	"github.com/thaw-dev/thaw/puller/mirror"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.IgnoreTopFunction("net/http.(*persistConn).writeLoop"),
		goleak.IgnoreTopFunction("net/http.(*persistConn).readLoop"),
		goleak.IgnoreTopFunction("internal/poll.runtime_pollWait"))
}

func TestPullThroughMirror(t *testing.T) {
	o := newOrigin(t)
	ref, img := o.push(t, "team/app:v1", 256<<10, 3)
	n := newNode(t, nodeOptions{})

	resp, _ := n.do(t, http.MethodGet, "/v2/", "", nil)
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Docker-Distribution-API-Version") != "registry/2.0" {
		t.Fatalf("GET /v2/: %s %v", resp.Status, resp.Header)
	}

	wantDigest, _ := img.Digest()
	wantManifest, _ := img.RawManifest()
	mt, _ := img.MediaType()
	resp, _ = n.do(t, http.MethodHead, manifestPath(ref, "v1"), o.host, nil)
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Docker-Content-Digest") != wantDigest.String() ||
		resp.Header.Get("Content-Type") != string(mt) || resp.ContentLength != int64(len(wantManifest)) {
		t.Fatalf("HEAD manifest by tag: %s %v", resp.Status, resp.Header)
	}
	resp, body := n.do(t, http.MethodGet, manifestPath(ref, wantDigest.String()), o.host, nil)
	if resp.StatusCode != http.StatusOK || !bytes.Equal(body, wantManifest) {
		t.Fatalf("GET manifest by digest: %s, %d bytes", resp.Status, len(body))
	}

	layers, _ := img.Layers()
	for round, wantSource := range []string{"upstream", "cache"} {
		for _, l := range layers {
			d, _ := l.Digest()
			resp, body := n.do(t, http.MethodGet, blobPath(ref, d), o.host, nil)
			if resp.StatusCode != http.StatusOK || !bytes.Equal(body, layerBytes(t, l)) {
				t.Fatalf("round %d: GET blob %s: %s, %d bytes", round, d, resp.Status, len(body))
			}
			if got := resp.Header.Get(mirror.SourceHeader); got != wantSource {
				t.Fatalf("round %d: source %q, want %q", round, got, wantSource)
			}
			if resp.Header.Get("Docker-Content-Digest") != d.String() {
				t.Fatalf("blob digest header %q", resp.Header.Get("Docker-Content-Digest"))
			}
			// HEAD answers with the length and no body.
			resp, body = n.do(t, http.MethodHead, blobPath(ref, d), o.host, nil)
			size, _ := l.Size()
			if resp.StatusCode != http.StatusOK || resp.ContentLength != size || len(body) != 0 {
				t.Fatalf("HEAD blob: %s length %d", resp.Status, resp.ContentLength)
			}
		}
	}
	var total int64
	for _, l := range layers {
		s, _ := l.Size()
		total += s
	}
	if got := o.blobBytes(); got != total {
		t.Fatalf("origin sent %d blob bytes for layers of %d: the second round did not come from the store", got, total)
	}
	if got := metricstest.Sum(t, n.reg, "thaw_served_bytes_total", map[string]string{"source": "cache"}); got < float64(total) {
		t.Fatalf("cache bytes metric %v < %d", got, total)
	}
}

func TestPullIndexOCIAndDocker(t *testing.T) {
	o := newOrigin(t)
	n := newNode(t, nodeOptions{})
	idx, err := random.Index(1024, 1, 2)
	if err != nil {
		t.Fatal(err)
	}
	ref, _ := name.ParseReference(o.host + "/multi:latest")
	if err := remote.WriteIndex(ref, idx); err != nil {
		t.Fatal(err)
	}
	// A Docker schema2 manifest too.
	img, _ := random.Image(1024, 1)
	dimg := mutate.MediaType(img, puller.MediaTypeDockerManifest)
	dref, _ := name.ParseReference(o.host + "/docker:v2")
	if err := remote.Write(dref, dimg); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		ref  name.Reference
		want string
	}{{ref, puller.MediaTypeOCIIndex}, {dref, puller.MediaTypeDockerManifest}} {
		resp, body := n.do(t, http.MethodGet, manifestPath(tc.ref, tc.ref.Identifier()), o.host, nil)
		if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != tc.want {
			t.Fatalf("%s: %s content-type %q want %q: %s", tc.ref, resp.Status, resp.Header.Get("Content-Type"), tc.want, body)
		}
		// From the store the media type is the same.
		resp, _ = n.do(t, http.MethodGet, manifestPath(tc.ref, resp.Header.Get("Docker-Content-Digest")), o.host, nil)
		if resp.Header.Get("Content-Type") != tc.want || resp.Header.Get(mirror.SourceHeader) != "cache" {
			t.Fatalf("%s by digest: content-type %q source %q", tc.ref, resp.Header.Get("Content-Type"), resp.Header.Get(mirror.SourceHeader))
		}
	}
}

func TestBlobRanges(t *testing.T) {
	o := newOrigin(t)
	ref, img := o.push(t, "ranges:v1", 64<<10, 1)
	layers, _ := img.Layers()
	d, _ := layers[0].Digest()
	want := layerBytes(t, layers[0])
	for _, cached := range []bool{false, true} {
		n := newNode(t, nodeOptions{})
		if cached {
			n.do(t, http.MethodGet, blobPath(ref, d), o.host, nil)
		}
		// Range: bytes=0-1 as the stargz snapshotter probes.
		resp, body := n.do(t, http.MethodGet, blobPath(ref, d), o.host, http.Header{"Range": {"bytes=0-1"}})
		if resp.StatusCode != http.StatusPartialContent || !bytes.Equal(body, want[:2]) {
			t.Fatalf("cached=%v bytes=0-1: %s %x", cached, resp.Status, body)
		}
		resp, body = n.do(t, http.MethodGet, blobPath(ref, d), o.host, http.Header{"Range": {"bytes=100-199"}})
		if resp.StatusCode != http.StatusPartialContent || !bytes.Equal(body, want[100:200]) ||
			resp.Header.Get("Content-Range") != "bytes 100-199/"+strconv.Itoa(len(want)) {
			t.Fatalf("cached=%v single range: %s %q", cached, resp.Status, resp.Header.Get("Content-Range"))
		}
		resp, body = n.do(t, http.MethodGet, blobPath(ref, d), o.host, http.Header{"Range": {"bytes=0-9,1000-1009,-5"}})
		if resp.StatusCode != http.StatusPartialContent {
			t.Fatalf("multi range: %s", resp.Status)
		}
		parts := readParts(t, resp, body)
		wantParts := [][]byte{want[:10], want[1000:1010], want[len(want)-5:]}
		if len(parts) != 3 || !bytes.Equal(parts[0], wantParts[0]) || !bytes.Equal(parts[1], wantParts[1]) || !bytes.Equal(parts[2], wantParts[2]) {
			t.Fatalf("cached=%v multi range parts wrong: %d parts", cached, len(parts))
		}
		// Malformed and unsatisfiable ranges are refused; nothing changes.
		for _, bad := range []string{"bytes=abc", "bytes=5-2", "bytes=" + strconv.Itoa(len(want)+10) + "-"} {
			resp, _ = n.do(t, http.MethodGet, blobPath(ref, d), o.host, http.Header{"Range": {bad}})
			if resp.StatusCode != http.StatusRequestedRangeNotSatisfiable {
				t.Fatalf("Range %q: %s, want 416", bad, resp.Status)
			}
		}
		resp, body = n.do(t, http.MethodGet, blobPath(ref, d), o.host, nil)
		if !bytes.Equal(body, want) {
			t.Fatalf("blob corrupted after bad ranges: %s", resp.Status)
		}
	}
}

// TestConcurrentReadersShareOneFetch: 32 clients ask at once for one uncached
// blob; the origin sends it once and every client gets every byte.
func TestConcurrentReadersShareOneFetch(t *testing.T) {
	o := newOrigin(t)
	ref, img := o.push(t, "burst:v1", 8<<20, 1)
	layers, _ := img.Layers()
	d, _ := layers[0].Digest()
	want := layerBytes(t, layers[0])
	n := newNode(t, nodeOptions{})

	const clients = 32
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	for range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := http.Get(n.url + blobPath(ref, d) + "?ns=" + o.host)
			if err != nil {
				errs <- err
				return
			}
			defer resp.Body.Close()
			got, err := io.ReadAll(resp.Body)
			if err != nil || !bytes.Equal(got, want) {
				errs <- errors.New("client got wrong or short bytes")
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if got := o.blobBytes(); got != int64(len(want)) {
		t.Fatalf("origin sent %d bytes for a %d-byte blob to %d clients", got, len(want), clients)
	}
}

// TestWrongDigestFromUpstream: bytes that do not hash to the digest never
// complete in the store and the client gets an error, not the whole blob.
func TestWrongDigestFromUpstream(t *testing.T) {
	o := newOrigin(t)
	ref, img := o.push(t, "tamper:v1", 1<<20, 1)
	layers, _ := img.Layers()
	d, _ := layers[0].Digest()
	good := layerBytes(t, layers[0])
	bad := bytes.Clone(good)
	bad[len(bad)/2] ^= 0xff
	o.setWrap(func(w http.ResponseWriter, r *http.Request, next http.Handler) bool {
		if !strings.HasSuffix(r.URL.Path, d.String()) || r.Method != http.MethodGet {
			return false
		}
		http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(bad))
		return true
	})
	n := newNode(t, nodeOptions{fetch: fetch.Config{IdleTimeout: 5 * time.Second, Retries: 0, SourceName: "upstream", CountBytes: true, ManifestTimeout: 5 * time.Second}})

	resp, body := n.do(t, http.MethodGet, blobPath(ref, d), o.host, nil)
	if resp.StatusCode == http.StatusOK && bytes.Equal(body, bad) {
		t.Fatal("the client received the whole tampered blob")
	}
	if _, err := n.store.Stat(t.Context(), d); !errors.Is(err, puller.ErrNotFound) {
		t.Fatalf("store after a digest mismatch: %v, want not found", err)
	}
	// A second request fails cleanly with an OCI error; the store stays empty.
	resp, body = n.do(t, http.MethodGet, blobPath(ref, d), o.host, nil)
	if bytes.Equal(body, bad) {
		t.Fatal("second request: the client received the whole tampered blob")
	}
	if got := metricstest.Sum(t, n.reg, "thaw_upstream_errors_total", map[string]string{"kind": "digest_mismatch"}); got < 1 {
		t.Fatalf("digest mismatches counted: %v", got)
	}
	// Once the upstream is honest again the blob comes through.
	o.setWrap(nil)
	resp, body = n.do(t, http.MethodGet, blobPath(ref, d), o.host, nil)
	if resp.StatusCode != http.StatusOK || !bytes.Equal(body, good) {
		t.Fatalf("after the upstream healed: %s", resp.Status)
	}
}

func TestStaleTagWhenUpstreamDown(t *testing.T) {
	for _, serveStale := range []bool{true, false} {
		t.Run("serveStale="+strconv.FormatBool(serveStale), func(t *testing.T) {
			o := newOrigin(t)
			ref, img := o.push(t, "stale:v1", 1024, 1)
			want, _ := img.Digest()
			cfg := catalog.DefaultResolverConfig()
			cfg.TTL, cfg.ServeStale, cfg.Timeout = 0, serveStale, 2*time.Second
			n := newNode(t, nodeOptions{resolver: cfg})
			resp, _ := n.do(t, http.MethodGet, manifestPath(ref, "v1"), o.host, nil)
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("first resolution: %s", resp.Status)
			}
			o.srv.Close()
			resp, body := n.do(t, http.MethodGet, manifestPath(ref, "v1"), o.host, nil)
			if serveStale {
				if resp.StatusCode != http.StatusOK || resp.Header.Get("Docker-Content-Digest") != want.String() {
					t.Fatalf("stale resolution: %s %s", resp.Status, body)
				}
				if got := metricstest.Sum(t, n.reg, "thaw_stale_tag_resolutions_total", nil); got != 1 {
					t.Fatalf("stale resolutions counted %v", got)
				}
				return
			}
			if resp.StatusCode != http.StatusServiceUnavailable {
				t.Fatalf("without stale tags: %s, want 503", resp.Status)
			}
		})
	}
}

func TestErrors(t *testing.T) {
	o := newOrigin(t)
	ref, _ := o.push(t, "exists:v1", 1024, 1)
	big := bytes.Repeat([]byte(" "), puller.MaxManifestSize+1)
	o.setWrap(func(w http.ResponseWriter, r *http.Request, next http.Handler) bool {
		if strings.Contains(r.URL.Path, "/huge/manifests/") {
			w.Header().Set("Content-Type", puller.MediaTypeOCIManifest)
			w.Header().Set("Docker-Content-Digest", "sha256:"+strings.Repeat("a", 64))
			w.Write(big)
			return true
		}
		return false
	})
	n := newNode(t, nodeOptions{})
	zero := "sha256:" + strings.Repeat("0", 64)
	tests := []struct {
		name, method, path, ns string
		status                 int
		code                   string
	}{
		{"unknown repository", "GET", "/v2/nope/manifests/v1", o.host, 404, "NOT_FOUND"},
		{"unknown tag", "GET", manifestPath(ref, "v9"), o.host, 404, "NOT_FOUND"},
		{"unknown blob", "GET", blobPath(ref, v1.Hash{Algorithm: "sha256", Hex: strings.Repeat("0", 64)}), o.host, 404, "NOT_FOUND"},
		{"huge manifest", "GET", "/v2/huge/manifests/" + zero, o.host, 413, "SIZE_INVALID"},
		{"bad digest", "GET", "/v2/exists/blobs/sha256:xyz", o.host, 400, "DIGEST_INVALID"},
		{"bad name", "GET", "/v2/UPPER/manifests/v1", o.host, 400, "NAME_INVALID"},
		{"bad ns", "GET", "/v2/exists/manifests/v1", "a b", 400, "NAME_INVALID"},
		{"unknown path", "GET", "/v2/exists/tags/list", o.host, 404, "NOT_FOUND"},
		{"push", "PUT", manifestPath(ref, "v2"), o.host, 405, "UNSUPPORTED"},
		{"upload", "POST", "/v2/exists/blobs/uploads/", o.host, 405, "UNSUPPORTED"},
		{"delete", "DELETE", manifestPath(ref, "v1"), o.host, 405, "UNSUPPORTED"},
		{"patch", "PATCH", "/v2/exists/blobs/" + zero, o.host, 405, "UNSUPPORTED"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := n.do(t, tt.method, tt.path, tt.ns, nil)
			if resp.StatusCode != tt.status {
				t.Fatalf("%s %s: %s, want %d: %s", tt.method, tt.path, resp.Status, tt.status, body)
			}
			var e struct {
				Errors []struct{ Code, Message string }
			}
			if err := json.Unmarshal(body, &e); err != nil || len(e.Errors) != 1 || e.Errors[0].Code != tt.code || e.Errors[0].Message == "" {
				t.Fatalf("error body %s, want code %s", body, tt.code)
			}
		})
	}
	infos, err := n.store.List(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if len(infos) != 0 {
		t.Fatalf("bad requests left %d blobs in the store", len(infos))
	}
}

// TestUnresponsiveUpstreamAnswersQuickly: an upstream that accepts connections
// but never answers must not hang the client; it gets 503 so containerd falls
// back to the next host.
func TestUnresponsiveUpstreamAnswersQuickly(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var conns []net.Conn
	var mu sync.Mutex
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
	})
	cfg := catalog.DefaultResolverConfig()
	cfg.Timeout = 300 * time.Millisecond
	n := newNode(t, nodeOptions{resolver: cfg, timeout: 300 * time.Millisecond})
	for _, path := range []string{"/v2/app/manifests/v1", "/v2/app/blobs/sha256:" + strings.Repeat("1", 64)} {
		resp, body := n.do(t, http.MethodGet, path, ln.Addr().String(), nil)
		if resp.StatusCode != http.StatusServiceUnavailable {
			t.Fatalf("%s: %s, want 503: %s", path, resp.Status, body)
		}
	}
}

// TestResumeAfterRestart: a download cut in the middle leaves a partial blob;
// a new daemon on the same directory resumes it from where it stopped.
func TestResumeAfterRestart(t *testing.T) {
	o := newOrigin(t)
	ref, img := o.push(t, "resume:v1", 4<<20, 1)
	layers, _ := img.Layers()
	d, _ := layers[0].Digest()
	want := layerBytes(t, layers[0])
	half := len(want) / 2
	o.setWrap(func(w http.ResponseWriter, r *http.Request, next http.Handler) bool {
		if r.Method != http.MethodGet || !strings.HasSuffix(r.URL.Path, d.String()) {
			return false
		}
		// Announce the whole blob, send half, then drop the connection.
		w.Header().Set("Content-Length", strconv.Itoa(len(want)))
		w.WriteHeader(http.StatusOK)
		w.Write(want[:half])
		w.(http.Flusher).Flush()
		panic(http.ErrAbortHandler)
	})
	dir := t.TempDir()
	n := newNode(t, nodeOptions{dir: dir, fetch: fetch.Config{IdleTimeout: 5 * time.Second, Retries: 0, SourceName: "upstream", CountBytes: true, ManifestTimeout: 5 * time.Second}})
	resp, body := n.do(t, http.MethodGet, blobPath(ref, d), o.host, nil)
	if resp.StatusCode == http.StatusOK && bytes.Equal(body, want) {
		t.Fatal("a cut download delivered the whole blob")
	}
	info, err := n.store.Stat(t.Context(), d)
	if err != nil || info.Complete || info.Present != int64(half) {
		t.Fatalf("after the cut: %+v %v, want a partial of %d bytes", info, err, half)
	}
	n.fetcher.Close()

	// "Restart": a new store and fetcher on the same directory; the origin is
	// healthy again.
	o.setWrap(nil)
	o.mu.Lock()
	o.ranges = nil
	o.mu.Unlock()
	n2 := newNode(t, nodeOptions{dir: dir})
	resp, body = n2.do(t, http.MethodGet, blobPath(ref, d), o.host, nil)
	if resp.StatusCode != http.StatusOK || !bytes.Equal(body, want) {
		t.Fatalf("after restart: %s, %d bytes", resp.Status, len(body))
	}
	o.mu.Lock()
	ranges := o.ranges
	o.mu.Unlock()
	// go-containerregistry's registry refuses open ranges, so the client may
	// ask again with a closed one; every request must start at the cut.
	if len(ranges) == 0 {
		t.Fatal("origin saw no blob request after the restart")
	}
	for _, r := range ranges {
		if !strings.HasPrefix(r, "bytes="+strconv.Itoa(half)+"-") {
			t.Fatalf("origin saw blob requests with ranges %q, want all resuming at %d", ranges, half)
		}
	}
}

// TestQuotaExceeded: a blob that cannot fit fails the request with 507 and
// leaves the store as it was.
func TestQuotaExceeded(t *testing.T) {
	o := newOrigin(t)
	ref, img := o.push(t, "big:v1", 2<<20, 1)
	layers, _ := img.Layers()
	d, _ := layers[0].Digest()
	n := newNode(t, nodeOptions{quota: 1 << 20})
	resp, body := n.do(t, http.MethodGet, blobPath(ref, d), o.host, nil)
	if resp.StatusCode != http.StatusInsufficientStorage {
		t.Fatalf("%s, want 507: %s", resp.Status, body)
	}
	if used, _ := n.store.Usage(); used != 0 {
		t.Fatalf("store uses %d bytes after a refused blob", used)
	}
	entries, _ := os.ReadDir(filepath.Join(n.dir, "store", "blobs", "sha256"))
	if len(entries) != 0 {
		t.Fatalf("blobs dir has %d entries", len(entries))
	}
}
