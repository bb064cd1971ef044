package upstream

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"golang.org/x/sync/singleflight"

	"github.com/thaw-dev/thaw/puller"
)

var (
	_ puller.Source         = (*Registry)(nil)
	_ puller.ManifestSource = (*Registry)(nil)
)

// Registry talks to origin registries. It is safe for concurrent use; one
// Registry serves every origin and repository the node pulls from. Close it
// when done to release connections.
type Registry struct {
	log       *slog.Logger
	keychain  authn.Keychain
	userAgent string
	insecure  map[string]bool // normalised hosts from Config.Insecure

	// Base transports shared by every repository, so connections to one host
	// are pooled across repositories. insecureTLS skips certificate checks
	// and only ever carries requests to hosts in insecure.
	secureTLS   *http.Transport
	insecureTLS *http.Transport

	transports   *transportCache
	setupFlights singleflight.Group
	// setupTimeout bounds creating a transport (ping, token exchange) apart
	// from any one caller's context: the first caller's cancellation must not
	// fail the others waiting on the same setup.
	setupTimeout time.Duration

	// lifetime is cancelled by Close to interrupt setups in flight.
	lifetime context.Context
	stop     context.CancelFunc

	mu     sync.Mutex
	closed bool
	setups sync.WaitGroup // transport setups in flight; Close waits for them
}

// New returns a Registry configured by cfg. logger may be nil.
func New(cfg Config, logger *slog.Logger) (*Registry, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}

	insecure := make(map[string]bool, len(cfg.Insecure))
	for _, h := range cfg.Insecure {
		host, _ := registryHost(h) // checked by Validate
		insecure[host] = true
	}
	static := make(staticKeychain, len(cfg.Auths))
	for h, a := range cfg.Auths {
		host, _ := registryHost(h)
		static[host] = a
	}
	var keychain authn.Keychain = static
	if cfg.Keychain != nil {
		keychain = authn.NewMultiKeychain(static, cfg.Keychain)
	}

	lifetime, stop := context.WithCancel(context.Background())
	return &Registry{
		log:          logger,
		keychain:     keychain,
		userAgent:    cfg.UserAgent,
		insecure:     insecure,
		secureTLS:    baseTransport(cfg, false),
		insecureTLS:  baseTransport(cfg, true),
		transports:   newTransportCache(transportCacheSize, transportTTL, time.Now),
		setupTimeout: cfg.DialTimeout + 3*cfg.ResponseHeaderTimeout, // dial, TLS, ping, token
		lifetime:     lifetime,
		stop:         stop,
	}, nil
}

func baseTransport(cfg Config, skipVerify bool) *http.Transport {
	dialer := &net.Dialer{Timeout: cfg.DialTimeout, KeepAlive: 30 * time.Second}
	t := &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           dialer.DialContext,
		ForceAttemptHTTP2:     true,
		TLSHandshakeTimeout:   cfg.ResponseHeaderTimeout,
		ResponseHeaderTimeout: cfg.ResponseHeaderTimeout,
		ExpectContinueTimeout: time.Second,
		IdleConnTimeout:       cfg.IdleConnTimeout,
		MaxIdleConnsPerHost:   cfg.MaxIdleConnsPerHost,
	}
	if skipVerify {
		// Only for hosts the operator listed in Config.Insecure.
		t.TLSClientConfig = &tls.Config{InsecureSkipVerify: true} //nolint:gosec // opt-in per host
	}
	return t
}

// Close interrupts transport setups in flight, makes later calls fail with
// ErrClosed and closes idle connections. Bodies already returned by FetchBlob
// keep streaming until their reader is closed. Close is idempotent.
func (r *Registry) Close() error {
	r.mu.Lock()
	r.closed = true
	r.mu.Unlock()
	r.stop()
	r.setups.Wait()
	r.secureTLS.CloseIdleConnections()
	r.insecureTLS.CloseIdleConnections()
	return nil
}

func (r *Registry) isClosed() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.closed
}

// beginSetup registers a transport setup with Close, unless already closed.
func (r *Registry) beginSetup() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return false
	}
	r.setups.Add(1)
	return true
}

// withInsecure applies Config.Insecure to a repository name that came
// without name.Insecure (names parsed from containerd requests never have it).
func (r *Registry) withInsecure(repo name.Repository) name.Repository {
	if !r.insecure[repo.RegistryStr()] || repo.Scheme() == "http" {
		return repo
	}
	reg, err := name.NewRegistry(repo.RegistryStr(), name.Insecure)
	if err != nil {
		return repo // cannot happen: the host came from a valid name
	}
	repo.Registry = reg
	return repo
}

// roundTripper returns the authenticated transport for repo, pinging the
// registry (and fetching a token) only when none is cached. Concurrent first
// calls for a repository share one setup.
func (r *Registry) roundTripper(ctx context.Context, repo name.Repository) (http.RoundTripper, error) {
	if r.isClosed() {
		return nil, ErrClosed
	}
	if err := ctx.Err(); err != nil {
		return nil, err // do not start a setup nobody waits for
	}
	key := repo.Name()
	if rt, ok := r.transports.get(key); ok {
		return rt, nil
	}
	ch := r.setupFlights.DoChan(key, func() (any, error) {
		// A setup that finished between get and DoChan left its result here.
		if rt, ok := r.transports.get(key); ok {
			return rt, nil
		}
		if !r.beginSetup() {
			return nil, ErrClosed
		}
		defer r.setups.Done()
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), r.setupTimeout)
		defer cancel()
		defer context.AfterFunc(r.lifetime, cancel)()

		rt, err := r.newTransport(sctx, repo)
		if err != nil {
			if r.lifetime.Err() != nil {
				return nil, fmt.Errorf("%w: %w", ErrClosed, err)
			}
			return nil, err
		}
		r.transports.put(key, rt)
		return rt, nil
	})
	select {
	case res := <-ch:
		if res.Err != nil {
			return nil, res.Err
		}
		return res.Val.(http.RoundTripper), nil
	case <-ctx.Done():
		// The setup goes on for the next caller; Close waits for it.
		return nil, ctx.Err()
	}
}

func (r *Registry) newTransport(ctx context.Context, repo name.Repository) (http.RoundTripper, error) {
	start := time.Now()
	auth, err := authn.Resolve(ctx, r.keychain, repo)
	if err != nil {
		return nil, fmt.Errorf("credentials for %s: %w", repo.RegistryStr(), err)
	}
	base := r.secureTLS
	if r.insecure[repo.RegistryStr()] {
		base = r.insecureTLS
	}
	rt, err := transport.NewWithContext(ctx, repo.Registry, auth,
		transport.NewUserAgent(base, r.userAgent), []string{repo.Scope(transport.PullScope)})
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", repo.RegistryStr(), err)
	}
	r.log.DebugContext(ctx, "upstream transport ready",
		"repository", repo.Name(), "anonymous", auth == authn.Anonymous, "took", time.Since(start))
	return rt, nil
}

// do sends one request for a path under /v2/<repository>/ through the
// repository's authenticated transport, following redirects (to blob storage,
// which gets no credentials). The response body is the caller's to close.
func (r *Registry) do(ctx context.Context, repo name.Repository, method, path string, header http.Header) (*http.Response, error) {
	rt, err := r.roundTripper(ctx, repo)
	if err != nil {
		return nil, err
	}
	u := url.URL{
		Scheme: repo.Scheme(), // the transport switches to what the ping found
		Host:   repo.RegistryStr(),
		Path:   "/v2/" + repo.RepositoryStr() + path,
	}
	req, err := http.NewRequestWithContext(ctx, method, u.String(), nil)
	if err != nil {
		return nil, err
	}
	for k, v := range header {
		req.Header[k] = v
	}
	client := http.Client{Transport: rt}
	return client.Do(req)
}

// errorAnswer turns an unexpected answer into an error carrying the
// registry's message, and closes the body.
func errorAnswer(resp *http.Response) error {
	defer resp.Body.Close()
	err := transport.CheckError(resp) // no code is expected: always an error
	if err == nil {
		err = errors.New("unexpected answer " + resp.Status)
	}
	return err
}
