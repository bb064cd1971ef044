package mirror

import (
	"bytes"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/thaw-dev/thaw/puller/store"
)

// served asks net/http's ServeContent for header over a blob of size bytes
// and returns the ranges of its 206 answer (nil for any other).
func served(t *testing.T, header string, size int64) []store.Range {
	t.Helper()
	content := make([]byte, size)
	for i := range content {
		content[i] = byte(i)
	}
	r := httptest.NewRequest(http.MethodGet, "/", nil)
	r.Header.Set("Range", header)
	w := httptest.NewRecorder()
	http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(content))
	if w.Code != http.StatusPartialContent {
		return nil
	}
	parse := func(cr string) store.Range {
		var a, z, total int64
		if _, err := fmt.Sscanf(cr, "bytes %d-%d/%d", &a, &z, &total); err != nil {
			t.Fatalf("ServeContent's Content-Range %q: %v", cr, err)
		}
		return store.Range{Start: a, End: z + 1}
	}
	ct := w.Header().Get("Content-Type")
	if !strings.HasPrefix(ct, "multipart/byteranges") {
		return []store.Range{parse(w.Header().Get("Content-Range"))}
	}
	_, params, _ := mime.ParseMediaType(ct)
	mr := multipart.NewReader(w.Body, params["boundary"])
	var out []store.Range
	for {
		p, err := mr.NextPart()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, parse(p.Header.Get("Content-Range")))
	}
}

// FuzzWantedRanges: the ranges the mirror starts fetching are exactly the
// ones ServeContent then serves; where ServeContent would not answer 206,
// none.
func FuzzWantedRanges(f *testing.F) {
	for _, seed := range []string{"bytes=0-1", "bytes=-51", "bytes=100-", "bytes=0-9,1000-1009,-5", "bytes=5-2", "bytes=abc",
		"bytes=2000-", "bytes=0-0,0-0", "bytes= 1 - 2 , 3-4", "bytes=-0", "bytes=--1", "bytes=0-1,", "items=0-1", "bytes=0-1999", ""} {
		f.Add(seed, int64(1000))
	}
	f.Fuzz(func(t *testing.T, header string, size int64) {
		if size < 0 || size > 1<<16 {
			return
		}
		got := wantedRanges(header, size)
		// Empty ranges (ServeContent answers "bytes=-0" with one) need
		// no bytes.
		var want []store.Range
		for _, r := range served(t, header, size) {
			if r.Len() > 0 {
				want = append(want, r)
			}
		}
		if len(got) != len(want) {
			t.Fatalf("wantedRanges(%q, %d) = %v, ServeContent served %v", header, size, got, want)
		}
		for i := range got {
			if got[i] != want[i] {
				t.Fatalf("wantedRanges(%q, %d) = %v, ServeContent served %v", header, size, got, want)
			}
		}
	})
}
