package mirror_test

import (
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// BenchmarkServeCachedBlob compares, in one run, three ways of getting a
// cached 1 GiB blob's bytes into a process: reading the store's file directly
// (raw), a bare loopback TCP connection fed by sendfile with no HTTP at all
// (the transport's limit on this machine), and a GET through the mirror
// (http). It reports the three throughputs and the ratios http/raw and
// http/tcp, which the README quotes.
//
//	go test -run '^$' -bench BenchmarkServeCachedBlob -benchtime 5x ./puller/mirror
func BenchmarkServeCachedBlob(b *testing.B) {
	size := int64(1 << 30)
	if s := os.Getenv("THAW_BENCH_BLOB_MIB"); s != "" {
		var mib int64
		fmt.Sscan(s, &mib)
		size = mib << 20
	}
	n := newNode(b, nodeOptions{})
	dgst := writeRandomBlob(b, n, size)
	path := filepath.Join(n.dir, "store", "blobs", "sha256", dgst.Hex)
	url := n.url + "/v2/bench/blobs/" + dgst.String() + "?ns=127.0.0.1:1"
	buf := make([]byte, 1<<20)

	read := func(name string, f func() (int64, error)) time.Duration {
		start := time.Now()
		got, err := f()
		if err != nil {
			b.Fatalf("%s: %v", name, err)
		}
		if got != size {
			b.Fatalf("%s: read %d of %d bytes", name, got, size)
		}
		return time.Since(start)
	}
	raw := func() (int64, error) {
		f, err := os.Open(path)
		if err != nil {
			return 0, err
		}
		defer f.Close()
		return io.CopyBuffer(io.Discard, onlyReader{f}, buf)
	}
	viaHTTP := func() (int64, error) {
		resp, err := http.Get(url)
		if err != nil {
			return 0, err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return 0, fmt.Errorf("status %s", resp.Status)
		}
		return io.CopyBuffer(io.Discard, onlyReader{resp.Body}, buf)
	}
	tcp := bareTCP(b, path)
	// Warm the page cache and the connection pool.
	read("raw", raw)
	read("tcp", tcp)
	read("http", viaHTTP)

	var rawTotal, tcpTotal, httpTotal time.Duration
	b.SetBytes(size)
	b.ResetTimer()
	for range b.N {
		// Alternate so that drift in the machine's load hits both alike.
		rawTotal += read("raw", raw)
		tcpTotal += read("tcp", tcp)
		httpTotal += read("http", viaHTTP)
	}
	b.StopTimer()
	gib := float64(size) * float64(b.N) / (1 << 30)
	b.ReportMetric(gib/rawTotal.Seconds(), "raw-GiB/s")
	b.ReportMetric(gib/tcpTotal.Seconds(), "tcp-GiB/s")
	b.ReportMetric(gib/httpTotal.Seconds(), "http-GiB/s")
	b.ReportMetric(rawTotal.Seconds()/httpTotal.Seconds(), "http/raw")
	b.ReportMetric(tcpTotal.Seconds()/httpTotal.Seconds(), "http/tcp")
}

// bareTCP returns a reader of path's bytes over a loopback TCP connection
// whose server only sendfiles the file: no HTTP, no store, no thaw.
func bareTCP(b *testing.B, path string) func() (int64, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	var wg sync.WaitGroup
	b.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			f, err := os.Open(path)
			if err == nil {
				io.Copy(c, f) // *net.TCPConn.ReadFrom(*os.File): sendfile
				f.Close()
			}
			c.Close()
		}
	}()
	buf := make([]byte, 1<<20)
	return func() (int64, error) {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			return 0, err
		}
		defer c.Close()
		return io.CopyBuffer(io.Discard, onlyReader{c}, buf)
	}
}

// BenchmarkBurstOneBlob: 32 clients ask at once for one uncached 64 MiB blob.
// It reports origin bytes / blob size, which must be exactly 1.
//
//	go test -run '^$' -bench BenchmarkBurstOneBlob -benchtime 3x ./puller/mirror
func BenchmarkBurstOneBlob(b *testing.B) {
	const clients = 32
	size := int64(64 << 20)
	o := newOrigin(b)
	var ratio float64
	for i := range b.N {
		b.StopTimer()
		data := make([]byte, size)
		rand.Read(data)
		layer := static.NewLayer(data, types.OCIUncompressedLayer)
		dgst, _ := layer.Digest()
		repo := fmt.Sprintf("%s/burst%d", o.host, i)
		if err := remote.WriteLayer(mustRepo(b, repo), layer); err != nil {
			b.Fatal(err)
		}
		n := newNode(b, nodeOptions{})
		before := o.blobBytes()
		b.StartTimer()
		var wg sync.WaitGroup
		for range clients {
			wg.Add(1)
			go func() {
				defer wg.Done()
				resp, err := http.Get(n.url + "/v2/burst" + fmt.Sprint(i) + "/blobs/" + dgst.String() + "?ns=" + o.host)
				if err != nil {
					b.Error(err)
					return
				}
				defer resp.Body.Close()
				h := sha256.New()
				if _, err := io.Copy(h, resp.Body); err != nil {
					b.Error(err)
					return
				}
				if fmt.Sprintf("%x", h.Sum(nil)) != dgst.Hex {
					b.Error("client got wrong bytes")
				}
			}()
		}
		wg.Wait()
		b.StopTimer()
		ratio = float64(o.blobBytes()-before) / float64(size)
		if ratio != 1 {
			b.Fatalf("origin bytes / blob size = %v", ratio)
		}
	}
	b.SetBytes(size * clients)
	b.ReportMetric(ratio, "origin-bytes/blob-size")
	b.ReportMetric(clients, "clients")
}

// onlyReader hides WriterTo/ReaderFrom so both sides copy through the same
// user-space buffer.
type onlyReader struct{ io.Reader }

// writeRandomBlob puts size pseudo-random bytes into n's store and returns
// their digest, streaming them twice from one seed (hash, then write) rather
// than holding them in memory.
func writeRandomBlob(b *testing.B, n *node, size int64) v1.Hash {
	b.Helper()
	gen := func() io.Reader {
		return io.LimitReader(mrand.NewChaCha8([32]byte{'t', 'h', 'a', 'w'}), size)
	}
	h := sha256.New()
	if _, err := io.Copy(h, gen()); err != nil {
		b.Fatal(err)
	}
	dgst := v1.Hash{Algorithm: "sha256", Hex: fmt.Sprintf("%x", h.Sum(nil))}
	ing, err := n.store.Ingest(b.Context(), dgst, size)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := io.CopyBuffer(ing, gen(), make([]byte, 1<<20)); err != nil {
		b.Fatal(err)
	}
	if err := ing.Commit(b.Context()); err != nil {
		b.Fatal(err)
	}
	return dgst
}

func mustRepo(b *testing.B, s string) name.Repository {
	r, err := name.NewRepository(s)
	if err != nil {
		b.Fatal(err)
	}
	return r
}
