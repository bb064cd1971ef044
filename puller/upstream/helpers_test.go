package upstream_test

import (
	"errors"
	"io"
	"log"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"go.uber.org/goleak"

	"github.com/thaw-dev/thaw/puller/upstream"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// newRegistryHandler is go-containerregistry's in-process registry, quiet.
func newRegistryHandler() http.Handler {
	return registry.New(registry.Logger(log.New(io.Discard, "", 0)))
}

// origin is an httptest server standing in for an origin registry; it counts
// the pings (GET /v2/) that transport setups send.
type origin struct {
	srv   *httptest.Server
	host  string
	pings atomic.Int64
}

func (o *origin) countPings(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v2/" {
			o.pings.Add(1)
		}
		h.ServeHTTP(w, r)
	})
}

func newOrigin(t *testing.T, h http.Handler) *origin {
	t.Helper()
	o := &origin{}
	o.srv = httptest.NewServer(o.countPings(h))
	t.Cleanup(o.srv.Close)
	o.host = strings.TrimPrefix(o.srv.URL, "http://")
	return o
}

func newTLSOrigin(t *testing.T, h http.Handler) *origin {
	t.Helper()
	o := &origin{}
	o.srv = httptest.NewUnstartedServer(o.countPings(h))
	// Unverified clients make the server log handshake errors; they are
	// what the tests expect.
	o.srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	o.srv.StartTLS()
	t.Cleanup(o.srv.Close)
	o.host = strings.TrimPrefix(o.srv.URL, "https://")
	return o
}

func (o *origin) repo(t *testing.T, path string) name.Repository {
	t.Helper()
	repo, err := name.NewRepository(o.host + "/" + path)
	if err != nil {
		t.Fatal(err)
	}
	return repo
}

// artifact is what tests push: a v1.Image or a v1.ImageIndex.
type artifact interface {
	remote.Taggable
	MediaType() (types.MediaType, error)
	Digest() (v1.Hash, error)
}

// pushed describes what was pushed, as Resolve and Manifest should see it.
type pushed struct {
	tag       name.Tag
	digest    name.Digest
	desc      v1.Descriptor
	manifest  []byte
	mediaType string
}

// push writes a to the origin under repo:tag with the server's own client,
// whose idle connections httptest closes with the server.
func (o *origin) push(t *testing.T, repo, tag string, a artifact, opts ...remote.Option) pushed {
	t.Helper()
	ref, err := name.NewTag(o.host+"/"+repo+":"+tag, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	opts = append([]remote.Option{remote.WithTransport(o.srv.Client().Transport)}, opts...)
	if err := remote.Push(ref, a, opts...); err != nil {
		t.Fatalf("push %s: %v", ref, err)
	}
	raw, err := a.RawManifest()
	if err != nil {
		t.Fatal(err)
	}
	mt, err := a.MediaType()
	if err != nil {
		t.Fatal(err)
	}
	dgst, err := a.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return pushed{
		tag:       ref,
		digest:    ref.Context().Digest(dgst.String()),
		desc:      v1.Descriptor{Digest: dgst, MediaType: mt, Size: int64(len(raw))},
		manifest:  raw,
		mediaType: string(mt),
	}
}

// newClient returns a Registry that never reads the machine's docker config,
// closed when the test ends.
func newClient(t *testing.T, edit func(*upstream.Config)) *upstream.Registry {
	t.Helper()
	cfg := upstream.DefaultConfig()
	cfg.Keychain = nil
	if edit != nil {
		edit(&cfg)
	}
	logger := slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
	r, err := upstream.New(cfg, logger)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := r.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	return r
}

// wantErr checks err against a sentinel and a Kind label.
func wantErr(t *testing.T, err, sentinel error, kind string) {
	t.Helper()
	if err == nil {
		t.Fatalf("got no error, want %v", sentinel)
	}
	t.Logf("error: %v", err)
	if sentinel != nil && !errors.Is(err, sentinel) {
		t.Fatalf("got %v, want it to wrap %v", err, sentinel)
	}
	if got := upstream.Kind(err); got != kind {
		t.Fatalf("Kind(%v) = %q, want %q", err, got, kind)
	}
}

func readAll(t *testing.T, rc io.ReadCloser) []byte {
	t.Helper()
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	return b
}
