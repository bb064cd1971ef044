//go:build e2e

package e2e

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"io"
	"net/http"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/thaw-dev/thaw/integration/testenv"
)

// TestRangesFromRealRegistry: range reads through thaw of a blob it does not
// have, from the real registry: each is answered once its own chunks came
// (the registry sends those, not the blob from its start), several ranges
// in one request included; a GET without Range then streams the whole blob,
// and the registry has sent each byte once.
func TestRangesFromRealRegistry(t *testing.T) {
	const mib = 1 << 20
	reg := startRegistry(t)
	d := startThaw(t, reg.addr, "--background-rate", "1KiB")
	data := make([]byte, 16*mib)
	if _, err := rand.Read(data); err != nil {
		t.Fatal(err)
	}
	repo, err := name.NewRepository(reg.addr+"/e2e/lazy", name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	layer := static.NewLayer(data, types.OCILayer)
	if err := remote.WriteLayer(repo, layer); err != nil {
		t.Fatal(err)
	}
	dgst, _ := layer.Digest()
	url := "http://" + d.mirrorAddr + "/v2/e2e/lazy/blobs/" + dgst.String() + "?ns=" + reg.addr
	get := func(rangeHeader string) (*http.Response, []byte) {
		t.Helper()
		req, err := http.NewRequest(http.MethodGet, url, nil)
		if err != nil {
			t.Fatal(err)
		}
		if rangeHeader != "" {
			req.Header.Set("Range", rangeHeader)
		}
		resp, err := testenv.HTTPClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatalf("GET %s: %v", rangeHeader, err)
		}
		return resp, body
	}

	start := time.Now()
	resp, body := get("bytes=-51")
	if resp.StatusCode != http.StatusPartialContent || !bytes.Equal(body, data[len(data)-51:]) {
		t.Fatalf("GET bytes=-51: %s, %d bytes", resp.Status, len(body))
	}
	t.Logf("last 51 bytes of an absent 16 MiB blob in %.0f ms", time.Since(start).Seconds()*1000)
	if resp, body = get("bytes=0-1"); resp.StatusCode != http.StatusPartialContent || !bytes.Equal(body, data[:2]) {
		t.Fatalf("GET bytes=0-1: %s %x", resp.Status, body)
	}
	const mid = 8*mib + 7
	resp, body = get(fmt.Sprintf("bytes=100-199,%d-%d", mid, mid+99))
	if resp.StatusCode != http.StatusPartialContent || !bytes.Contains(body, data[100:200]) || !bytes.Contains(body, data[mid:mid+100]) {
		t.Fatalf("GET two ranges: %s, %d bytes", resp.Status, len(body))
	}
	// Three chunks of 1 MiB: the last, the first, the one at 8 MiB.
	sent := blobBytesSent(t, reg, dgst.String(), 3*mib)
	if sent.full != 0 || sent.partial != 3*mib {
		t.Fatalf("the registry sent %+v for three ranges in three chunks; want three 1 MiB ranges (206), no whole blob", sent)
	}

	if resp, body = get(""); resp.StatusCode != http.StatusOK || !bytes.Equal(body, data) {
		t.Fatalf("GET whole blob: %s, %d bytes", resp.Status, len(body))
	}
	if b := d.blobs(t)[dgst.String()]; !b.Complete || b.Size != int64(len(data)) {
		t.Errorf("thaw's store after the whole GET: %+v, want the blob complete", b)
	}
	if sent = blobBytesSent(t, reg, dgst.String(), int64(len(data))); sent.partial+sent.full != int64(len(data)) {
		t.Errorf("the registry sent %+v for a %d-byte blob; want each byte once", sent, len(data))
	}
	m := d.metrics(t)
	if got := m[`thaw_lazy_fetched_bytes_total{kind="demand"}`]; got != 3*mib {
		t.Errorf("thaw_lazy_fetched_bytes_total{kind=demand} = %v, want the 3 MiB of the chunks read", got)
	}
	if got := m[`thaw_mirror_range_first_byte_seconds_count`]; got != 3 {
		t.Errorf("thaw_mirror_range_first_byte_seconds_count = %v, want 3", got)
	}
}

// accessLogBytes is a line of the registry's access log with its status and
// body bytes.
var accessLogBytes = regexp.MustCompile(`^\S+ \S+ \S+ \[[^\]]*\] "GET (\S+) [^"]*" (\d{3}) (\d+) `)

type blobSent struct{ partial, full int64 } // bytes sent in 206 and 200 answers

// blobBytesSent sums what the registry's access log says it sent of a blob,
// polling up to 5 s for at least want bytes (it logs a request after its
// last byte).
func blobBytesSent(t *testing.T, reg *registry, dgst string, want int64) blobSent {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		raw, err := os.ReadFile(reg.proc.Log)
		if err != nil {
			t.Fatal(err)
		}
		var s blobSent
		for line := range strings.SplitSeq(string(raw), "\n") {
			m := accessLogBytes.FindStringSubmatch(line)
			if m == nil || !strings.Contains(m[1], "/blobs/"+dgst) {
				continue
			}
			n, _ := strconv.ParseInt(m[3], 10, 64)
			switch m[2] {
			case "206":
				s.partial += n
			case "200":
				s.full += n
			}
		}
		if s.partial+s.full >= want || time.Now().After(deadline) {
			return s
		}
		time.Sleep(50 * time.Millisecond)
	}
}
