package api_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/thaw-dev/thaw/puller"
	"github.com/thaw-dev/thaw/puller/api"
	"github.com/thaw-dev/thaw/puller/catalog"
	"github.com/thaw-dev/thaw/puller/prefetch"
	"github.com/thaw-dev/thaw/puller/store"
)

// notFound resolves nothing and has no manifest, so that fuzzed prefetch
// jobs end at once.
type notFound struct{}

func (notFound) Resolve(_ context.Context, ref name.Reference) (catalog.Resolution, error) {
	return catalog.Resolution{}, fmt.Errorf("%s: %w", ref, puller.ErrNotFound)
}

func (notFound) Manifest(context.Context, name.Repository, v1.Hash) ([]byte, string, string, error) {
	return nil, "", "", puller.ErrNotFound
}

func (notFound) Ensure(context.Context, name.Repository, v1.Hash) (bool, error) {
	return false, puller.ErrNotFound
}

// FuzzRequestBody posts arbitrary bodies to the API's POST endpoints: every
// answer is a success or a client error with a JSON message, never a panic
// nor a server error.
func FuzzRequestBody(f *testing.F) {
	for _, seed := range []string{
		`{"images":["registry.example/a:v1"],"wait":true}`,
		`{"images":["registry.example/a:v1"]}`,
		`{"images":["a"],"platforms":["linux/arm64/v8"],"allPlatforms":true}`,
		`{"images":["a"],"platforms":["linux//"]}`,
		`{"images":["a"],"containerd":"/run/c.sock","namespace":"x"}`,
		`{"target":0}`,
		`{"target":-3}`,
		`{"images":[]}`,
		`{`,
		``,
		`null`,
		`{"images":["a"]} trailing`,
	} {
		f.Add(seed, true)
		f.Add(seed, false)
	}
	dir := f.TempDir()
	st, err := store.New(dir + "/store")
	if err != nil {
		f.Fatal(err)
	}
	cat, err := catalog.Open(dir + "/catalog.json")
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, body string, prefetchPath bool) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		srv := api.NewServer(api.Deps{
			Store: st, Catalog: cat, Prefetcher: prefetch.New(notFound{}, notFound{}, st.Stat, 1),
			Log: slog.New(slog.DiscardHandler), Ctx: ctx,
		})
		defer srv.Wait()
		path := "/api/v1/gc"
		if prefetchPath {
			path = "/api/v1/prefetch"
		}
		req := httptest.NewRequest(http.MethodPost, path, strings.NewReader(body))
		rec := httptest.NewRecorder()
		srv.ServeHTTP(rec, req)
		switch rec.Code {
		case http.StatusOK, http.StatusAccepted:
		case http.StatusBadRequest, http.StatusNotImplemented:
			var e struct{ Error string }
			if err := json.Unmarshal(rec.Body.Bytes(), &e); err != nil || e.Error == "" {
				t.Fatalf("%s %q: %d with body %q, want a JSON error", path, body, rec.Code, rec.Body)
			}
		default:
			t.Fatalf("%s %q: status %d %q", path, body, rec.Code, rec.Body)
		}
	})
}
