package mirror_test

import (
	"bytes"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"strconv"
	"strings"
	"testing"

	"github.com/thaw-dev/thaw/metrics/metricstest"
	"github.com/thaw-dev/thaw/puller/fetch"
)

// TestLazyRangesOfAbsentBlob: range requests for a blob the node does not
// have are answered once their own bytes came from the origin, not the
// blob's start; HEAD says the size without fetching the blob; a GET without
// Range streams the whole blob; the origin sends each byte once.
func TestLazyRangesOfAbsentBlob(t *testing.T) {
	const mib = 1 << 20
	o := newOrigin(t)
	ref, img := o.push(t, "lazy:v1", 8*mib, 1)
	layers, _ := img.Layers()
	d, _ := layers[0].Digest()
	want := layerBytes(t, layers[0])
	size := len(want)
	cfg := fetch.DefaultConfig()
	cfg.BackgroundRate = 64 << 10 // the fill stays out of the way
	n := newNode(t, nodeOptions{fetch: cfg})

	resp, body := n.do(t, http.MethodHead, blobPath(ref, d), o.host, nil)
	if resp.StatusCode != http.StatusOK || resp.ContentLength != int64(size) || len(body) != 0 {
		t.Fatalf("HEAD of an absent blob: %s, length %d", resp.Status, resp.ContentLength)
	}
	// The end first, as the stargz snapshotter reads an eStargz footer.
	resp, body = n.do(t, http.MethodGet, blobPath(ref, d), o.host, http.Header{"Range": {"bytes=-51"}})
	if resp.StatusCode != http.StatusPartialContent || !bytes.Equal(body, want[size-51:]) ||
		resp.Header.Get("Content-Range") != "bytes "+strconv.Itoa(size-51)+"-"+strconv.Itoa(size-1)+"/"+strconv.Itoa(size) {
		t.Fatalf("GET bytes=-51: %s %q, %d bytes", resp.Status, resp.Header.Get("Content-Range"), len(body))
	}
	// The last chunk alone (the background fill waits for its rate).
	if got := o.blobBytes(); got > mib {
		t.Fatalf("origin sent %d bytes to serve 51 at the end of a %d-byte blob", got, size)
	}
	resp, body = n.do(t, http.MethodGet, blobPath(ref, d), o.host, http.Header{"Range": {"bytes=0-1"}})
	if resp.StatusCode != http.StatusPartialContent || !bytes.Equal(body, want[:2]) {
		t.Fatalf("GET bytes=0-1: %s %x", resp.Status, body)
	}
	// Several ranges far apart, in one multipart answer.
	const mid = 5*mib + 123
	resp, body = n.do(t, http.MethodGet, blobPath(ref, d), o.host, http.Header{"Range": {"bytes=10-19," + strconv.Itoa(mid) + "-" + strconv.Itoa(mid+99) + ",-5"}})
	if resp.StatusCode != http.StatusPartialContent {
		t.Fatalf("multi range: %s", resp.Status)
	}
	parts := readParts(t, resp, body)
	wantParts := [][]byte{want[10:20], want[mid : mid+100], want[size-5:]}
	if len(parts) != 3 || !bytes.Equal(parts[0], wantParts[0]) || !bytes.Equal(parts[1], wantParts[1]) || !bytes.Equal(parts[2], wantParts[2]) {
		t.Fatalf("multi range parts wrong: %d parts", len(parts))
	}
	if got := o.blobBytes(); got > 3*mib {
		t.Fatalf("origin sent %d bytes for ranges in 3 chunks (the first, a middle one, the last)", got)
	}
	for _, name := range []string{"thaw_mirror_range_first_byte_seconds", "thaw_mirror_range_duration_seconds"} {
		if got := metricstest.Sum(t, n.reg, name, nil); got != 3 {
			t.Errorf("%s observations = %v, want 3", name, got)
		}
	}

	// A whole-blob GET streams it all, verified.
	resp, body = n.do(t, http.MethodGet, blobPath(ref, d), o.host, nil)
	if resp.StatusCode != http.StatusOK || !bytes.Equal(body, want) {
		t.Fatalf("GET whole blob: %s, %d bytes", resp.Status, len(body))
	}
	if got := o.blobBytes(); got != int64(size) {
		t.Errorf("origin sent %d bytes in all for a %d-byte blob; want each once (ranges %v)", got, size, o.ranges)
	}
	if info, err := n.store.Stat(t.Context(), d); err != nil || !info.Complete {
		t.Errorf("Stat after the whole GET = %+v, %v; want complete", info, err)
	}
	demand := metricstest.Sum(t, n.reg, "thaw_lazy_fetched_bytes_total", map[string]string{"kind": "demand"})
	// The chunks of the ranges: the last (short) one, the middle one, and
	// the first unless the fill had brought it.
	if tail := float64(size % mib); demand < mib+tail || demand > 2*mib+tail {
		t.Errorf("bytes fetched on demand = %v, want the chunks the ranges touched", demand)
	}
}

func readParts(t *testing.T, resp *http.Response, body []byte) [][]byte {
	t.Helper()
	_, params, err := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	if err != nil {
		t.Fatal(err)
	}
	mr := multipart.NewReader(bytes.NewReader(body), params["boundary"])
	var parts [][]byte
	for {
		p, err := mr.NextPart()
		if err == io.EOF {
			return parts
		}
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(p)
		parts = append(parts, b)
	}
}

// TestLazyWholeAnswersAreVerified: when ServeContent answers a ranged GET
// with the whole blob (If-Range for another version, ranges adding up to
// more than the blob), the answer's last byte waits for the verification,
// so a blob with a wrong byte is cut short, never delivered whole.
func TestLazyWholeAnswersAreVerified(t *testing.T) {
	o := newOrigin(t)
	ref, img := o.push(t, "lazy:v1", 512<<10, 1)
	layers, _ := img.Layers()
	d, _ := layers[0].Digest()
	size := len(layerBytes(t, layers[0]))
	// The origin flips the blob's last byte.
	o.setWrap(func(w http.ResponseWriter, r *http.Request, next http.Handler) bool {
		if r.Method != http.MethodGet || !strings.Contains(r.URL.Path, "/blobs/") {
			return false
		}
		next.ServeHTTP(&flipLast{ResponseWriter: w, last: int64(size - 1), start: startOf(r.Header.Get("Range"))}, r)
		return true
	})
	for _, h := range []http.Header{
		{"Range": {"bytes=0-"}, "If-Range": {`"sha256:other"`}},
		{"Range": {"bytes=0-" + strconv.Itoa(size-1) + ",0-" + strconv.Itoa(size-1)}},
	} {
		n := newNode(t, nodeOptions{})
		resp, body := n.do(t, http.MethodGet, blobPath(ref, d), o.host, h)
		if len(body) == size {
			t.Fatalf("%v: the whole wrong blob was delivered (%s)", h, resp.Status)
		}
	}
}

// startOf is where the answer to a "bytes=a-b" request starts.
func startOf(h string) int64 {
	a, _, _ := strings.Cut(strings.TrimPrefix(h, "bytes="), "-")
	n, _ := strconv.ParseInt(a, 10, 64)
	return n
}

type flipLast struct {
	http.ResponseWriter
	last, start, off int64
}

func (f *flipLast) Write(p []byte) (int, error) {
	if i := f.last - f.start - f.off; i >= 0 && i < int64(len(p)) {
		p = bytes.Clone(p)
		p[i] ^= 1
	}
	n, err := f.ResponseWriter.Write(p)
	f.off += int64(n)
	return n, err
}
