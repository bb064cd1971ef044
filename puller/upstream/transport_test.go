package upstream_test

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/thaw-dev/thaw/puller"
	"github.com/thaw-dev/thaw/puller/upstream"
)

// pullAll resolves, reads the manifest and fetches the first layer of p.
func pullAll(ctx context.Context, client *upstream.Registry, p pushed) error {
	desc, err := client.Resolve(ctx, p.tag)
	if err != nil {
		return err
	}
	if _, _, err := client.Manifest(ctx, p.tag.Context(), desc.Digest); err != nil {
		return err
	}
	var m struct {
		Layers []struct{ Digest string }
	}
	if err := json.Unmarshal(p.manifest, &m); err != nil {
		return err
	}
	h, err := v1.NewHash(m.Layers[0].Digest)
	if err != nil {
		return err
	}
	rc, _, err := client.FetchBlob(ctx, p.tag.Context(), h, 0)
	if err != nil {
		return err
	}
	return rc.Close()
}

func randomDigest() v1.Hash {
	b := make([]byte, 32)
	rand.Read(b)
	return v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(b)}
}

func requireBasicAuth(user, pass string, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if u, p, ok := r.BasicAuth(); !ok || u != user || p != pass {
			w.Header().Set("WWW-Authenticate", `Basic realm="thaw-test"`)
			http.Error(w, `{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}`, http.StatusUnauthorized)
			return
		}
		h.ServeHTTP(w, r)
	})
}

type keychainFunc func(authn.Resource) (authn.Authenticator, error)

func (f keychainFunc) Resolve(r authn.Resource) (authn.Authenticator, error) { return f(r) }

func TestBasicAuth(t *testing.T) {
	o := newOrigin(t, requireBasicAuth("puller", "s3cret", newRegistryHandler()))
	good := authn.AuthConfig{Username: "puller", Password: "s3cret"}
	p := o.push(t, "private/app", "v1", randomImage(t), remote.WithAuth(authn.FromConfig(good)))

	tests := []struct {
		name string
		edit func(*upstream.Config)
		want error
	}{
		{"auths", func(c *upstream.Config) { c.Auths = map[string]authn.AuthConfig{o.host: good} }, nil},
		{"keychain", func(c *upstream.Config) {
			c.Keychain = keychainFunc(func(r authn.Resource) (authn.Authenticator, error) {
				if r.RegistryStr() == o.host {
					return authn.FromConfig(good), nil
				}
				return authn.Anonymous, nil
			})
		}, nil},
		{"auths before keychain", func(c *upstream.Config) {
			c.Auths = map[string]authn.AuthConfig{o.host: good}
			c.Keychain = keychainFunc(func(authn.Resource) (authn.Authenticator, error) {
				return authn.FromConfig(authn.AuthConfig{Username: "puller", Password: "stale"}), nil
			})
		}, nil},
		{"anonymous", nil, puller.ErrUnauthorized},
		{"wrong password", func(c *upstream.Config) {
			c.Auths = map[string]authn.AuthConfig{o.host: {Username: "puller", Password: "nope"}}
		}, puller.ErrUnauthorized},
		{"other host's credentials", func(c *upstream.Config) {
			c.Auths = map[string]authn.AuthConfig{"registry.example.com": good}
		}, puller.ErrUnauthorized},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			client := newClient(t, tt.edit)
			err := pullAll(t.Context(), client, p)
			if tt.want == nil {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			wantErr(t, err, tt.want, "unauthorized")
		})
	}
}

// bearerOrigin puts a token service in front of h, like Docker Hub: /token
// trades basic credentials for a token the registry then requires.
func bearerOrigin(t *testing.T, user, pass string, h http.Handler) (*origin, *atomic.Int64) {
	t.Helper()
	var tokens atomic.Int64
	var o *origin
	o = newOrigin(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/token" {
			if u, p, ok := r.BasicAuth(); !ok || u != user || p != pass {
				http.Error(w, `{"errors":[{"code":"UNAUTHORIZED","message":"bad credentials"}]}`, http.StatusUnauthorized)
				return
			}
			tokens.Add(1)
			fmt.Fprint(w, `{"token":"t0ken","expires_in":300}`)
			return
		}
		if r.Header.Get("Authorization") != "Bearer t0ken" {
			w.Header().Set("WWW-Authenticate",
				fmt.Sprintf(`Bearer realm="http://%s/token",service="thaw-test",scope="repository:private/app:pull"`, o.host))
			http.Error(w, `{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}`, http.StatusUnauthorized)
			return
		}
		h.ServeHTTP(w, r)
	}))
	return o, &tokens
}

func TestBearerAuth(t *testing.T) {
	o, tokens := bearerOrigin(t, "puller", "s3cret", newRegistryHandler())
	good := authn.AuthConfig{Username: "puller", Password: "s3cret"}
	p := o.push(t, "private/app", "v1", randomImage(t), remote.WithAuth(authn.FromConfig(good)))

	t.Run("credentials", func(t *testing.T) {
		client := newClient(t, func(c *upstream.Config) { c.Auths = map[string]authn.AuthConfig{o.host: good} })
		tokens.Store(0)
		for range 3 {
			if err := pullAll(t.Context(), client, p); err != nil {
				t.Fatal(err)
			}
		}
		if n := tokens.Load(); n != 1 {
			t.Errorf("fetched %d tokens for one repository, want 1", n)
		}
	})
	t.Run("anonymous", func(t *testing.T) {
		client := newClient(t, nil)
		wantErr(t, pullAll(t.Context(), client, p), puller.ErrUnauthorized, "unauthorized")
	})
}

func closedPort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// silentListener accepts connections and never answers, until the test ends.
func silentListener(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu    sync.Mutex
		conns []net.Conn
		wg    sync.WaitGroup
	)
	wg.Go(func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	})
	t.Cleanup(func() {
		l.Close()
		wg.Wait()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	return l.Addr().String()
}

func TestUnavailable(t *testing.T) {
	// hang answers the ping, then never answers manifests until the client
	// gives up (or the test ends).
	release := make(chan struct{})
	hang := newOrigin(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v2/" {
			return
		}
		select {
		case <-r.Context().Done():
		case <-release:
		}
	}))
	t.Cleanup(func() { close(release) }) // runs before hang's server closes

	statusOrigin := func(code int) *origin {
		return newOrigin(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/v2/" {
				return
			}
			w.WriteHeader(code)
		}))
	}

	tests := []struct {
		name string
		host string
		kind string
	}{
		{"closed port", closedPort(t), "connection"},
		{"no answer to the ping", silentListener(t), "timeout"},
		{"no answer to the request", hang.host, "timeout"},
		{"503", statusOrigin(http.StatusServiceUnavailable).host, "server"},
		{"500", statusOrigin(http.StatusInternalServerError).host, "server"},
		{"429", statusOrigin(http.StatusTooManyRequests).host, "server"},
		{"ping 502", newOrigin(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(http.StatusBadGateway)
		})).host, "server"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			client := newClient(t, func(c *upstream.Config) {
				c.ResponseHeaderTimeout = 200 * time.Millisecond
			})
			repo, err := name.NewRepository(tt.host + "/test/app")
			if err != nil {
				t.Fatal(err)
			}
			_, err = client.Resolve(t.Context(), repo.Tag("v1"))
			wantErr(t, err, puller.ErrUnavailable, tt.kind)
			if !strings.Contains(err.Error(), "resolve "+repo.Tag("v1").String()) {
				t.Errorf("error %q does not say what was asked", err)
			}

			rc, _, err := client.FetchBlob(t.Context(), repo, randomDigest(), 0)
			if err == nil {
				rc.Close()
			}
			wantErr(t, err, puller.ErrUnavailable, tt.kind)
		})
	}
}

func TestInsecureTLS(t *testing.T) {
	o := newTLSOrigin(t, newRegistryHandler())
	p := o.push(t, "test/app", "v1", randomImage(t))

	t.Run("listed", func(t *testing.T) {
		client := newClient(t, func(c *upstream.Config) { c.Insecure = []string{o.host} })
		if err := pullAll(t.Context(), client, p); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("unlisted", func(t *testing.T) {
		client := newClient(t, nil)
		_, err := client.Resolve(t.Context(), p.tag)
		wantErr(t, err, puller.ErrUnavailable, "connection")
		var certErr *tls.CertificateVerificationError
		if !errors.As(err, &certErr) {
			t.Errorf("got %v, want a certificate verification error", err)
		}
	})
}

// TestInsecurePlainHTTP uses an address go-containerregistry does not treat
// as local, so plain HTTP is only allowed when listed in Config.Insecure.
func TestInsecurePlainHTTP(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.2:0")
	if err != nil {
		t.Skipf("cannot listen on 127.0.0.2: %v", err)
	}
	srv := httptest.NewUnstartedServer(newRegistryHandler())
	srv.Listener.Close()
	srv.Listener = l
	srv.Start()
	t.Cleanup(srv.Close)
	o := &origin{srv: srv, host: l.Addr().String()}
	p := o.push(t, "test/app", "v1", randomImage(t))

	t.Run("listed", func(t *testing.T) {
		client := newClient(t, func(c *upstream.Config) { c.Insecure = []string{o.host} })
		if err := pullAll(t.Context(), client, p); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("unlisted", func(t *testing.T) {
		client := newClient(t, nil)
		ref, err := name.NewTag(p.tag.String()) // without name.Insecure
		if err != nil {
			t.Fatal(err)
		}
		_, err = client.Resolve(t.Context(), ref)
		wantErr(t, err, puller.ErrUnavailable, "connection")
	})
}

func TestTransportCache(t *testing.T) {
	o := newOrigin(t, newRegistryHandler())
	a := o.push(t, "test/a", "v1", randomImage(t))
	b := o.push(t, "test/b", "v1", randomImage(t))
	client := newClient(t, nil)
	o.pings.Store(0)

	for _, p := range []pushed{a, b} {
		var wg sync.WaitGroup
		errs := make(chan error, 16)
		for range 16 {
			wg.Go(func() { errs <- pullAll(t.Context(), client, p) })
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Fatal(err)
			}
		}
	}
	if n := o.pings.Load(); n != 2 {
		t.Errorf("pinged the registry %d times for 2 repositories, want 2", n)
	}
}

func TestCanceled(t *testing.T) {
	o := newOrigin(t, newRegistryHandler())
	client := newClient(t, nil)
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	_, err := client.Resolve(ctx, o.repo(t, "test/app").Tag("v1"))
	wantErr(t, err, context.Canceled, "canceled")
	if errors.Is(err, puller.ErrUnavailable) {
		t.Errorf("the caller giving up is not the origin being unavailable: %v", err)
	}
}

func TestClose(t *testing.T) {
	o := newOrigin(t, newRegistryHandler())
	p := o.push(t, "test/app", "v1", randomImage(t))
	client := newClient(t, nil)
	if err := pullAll(t.Context(), client, p); err != nil {
		t.Fatal(err)
	}
	if err := client.Close(); err != nil {
		t.Fatal(err)
	}
	_, err := client.Resolve(t.Context(), p.tag)
	wantErr(t, err, upstream.ErrClosed, "canceled")
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name string
		edit func(*upstream.Config)
		ok   bool
	}{
		{"default", func(*upstream.Config) {}, true},
		{"insecure hosts", func(c *upstream.Config) { c.Insecure = []string{"registry.local:5000", "10.0.0.1", "docker.io"} }, true},
		{"auths", func(c *upstream.Config) { c.Auths = map[string]authn.AuthConfig{"ghcr.io": {}} }, true},
		{"no dial timeout", func(c *upstream.Config) { c.DialTimeout = 0 }, false},
		{"no header timeout", func(c *upstream.Config) { c.ResponseHeaderTimeout = 0 }, false},
		{"negative idle timeout", func(c *upstream.Config) { c.IdleConnTimeout = -time.Second }, false},
		{"negative idle conns", func(c *upstream.Config) { c.MaxIdleConnsPerHost = -1 }, false},
		{"insecure with scheme", func(c *upstream.Config) { c.Insecure = []string{"http://registry.local"} }, false},
		{"insecure with path", func(c *upstream.Config) { c.Insecure = []string{"registry.local/v2"} }, false},
		{"empty insecure", func(c *upstream.Config) { c.Insecure = []string{""} }, false},
		{"auths url", func(c *upstream.Config) {
			c.Auths = map[string]authn.AuthConfig{"https://index.docker.io/v1/": {}}
		}, false},
		{"user agent newline", func(c *upstream.Config) { c.UserAgent = "thaw\r\nX-Evil: 1" }, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := upstream.DefaultConfig()
			tt.edit(&cfg)
			err := cfg.Validate()
			if tt.ok && err != nil {
				t.Fatalf("Validate: %v", err)
			}
			if !tt.ok {
				if !errors.Is(err, upstream.ErrInvalidConfig) {
					t.Fatalf("Validate = %v, want ErrInvalidConfig", err)
				}
				if _, err := upstream.New(cfg, nil); err == nil {
					t.Fatal("New accepted an invalid config")
				}
			}
		})
	}
}
