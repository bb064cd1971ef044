package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/sync/errgroup"

	"github.com/thaw-dev/thaw/lazyload/snapshotter"
	"github.com/thaw-dev/thaw/metrics"
	"github.com/thaw-dev/thaw/p2p/cluster"
	"github.com/thaw-dev/thaw/predictor/live"
	"github.com/thaw-dev/thaw/puller"
	"github.com/thaw-dev/thaw/puller/api"
	"github.com/thaw-dev/thaw/puller/catalog"
	"github.com/thaw-dev/thaw/puller/ctrimport"
	"github.com/thaw-dev/thaw/puller/fetch"
	"github.com/thaw-dev/thaw/puller/mirror"
	"github.com/thaw-dev/thaw/puller/prefetch"
	"github.com/thaw-dev/thaw/puller/store"
	"github.com/thaw-dev/thaw/puller/upstream"
)

// nodeConfig is everything `thaw daemon` takes.
type nodeConfig struct {
	DataDir         string
	MirrorAddr      string
	MetricsAddr     string
	APIAddr         string // unix socket path, or host:port
	Insecure        []string
	Auths           map[string]authn.AuthConfig
	DefaultRegistry string
	Quota           int64 // 0: half the data directory's file system
	Resolver        catalog.ResolverConfig
	Concurrency     int
	Peer            peerConfig
	Predict         predictConfig
	Snapshotter     snapshotter.Config // off when Socket is empty
	// BackgroundRate bounds, in bytes per second, the fill of blobs read
	// by range (lazy loading); 0: unlimited.
	BackgroundRate int64
	// BackgroundQuiet: the fill waits until range reads have been quiet
	// this long; 0: it does not wait.
	BackgroundQuiet time.Duration
}

// node is one wired daemon: store, upstream, fetcher, mirror, API, metrics.
type node struct {
	cfg      nodeConfig
	log      *slog.Logger
	store    *store.Store
	upstream *upstream.Registry
	fetcher  *fetch.Fetcher
	api      *api.Server
	peer     *peerNode
	predict  *live.Service // nil when prediction is off
	servers  []*server
	lazy     *snapshotter.Service // nil unless --snapshotter-socket
}

type server struct {
	name string
	ln   net.Listener
	srv  *http.Server
}

// newNode wires a daemon and opens its listeners, so that addresses given as
// port 0 are known (Addr) before Run.
func newNode(ctx context.Context, cfg nodeConfig, log *slog.Logger) (n *node, err error) {
	if err := os.MkdirAll(cfg.DataDir, 0o755); err != nil {
		return nil, fmt.Errorf("data directory: %w", err)
	}
	// Refuse to start beside a running daemon before touching its store.
	if strings.Contains(cfg.APIAddr, "/") {
		if err := removeStaleSocket(cfg.APIAddr); err != nil {
			return nil, err
		}
	}
	quota := cfg.Quota
	if quota == 0 {
		var fs syscall.Statfs_t
		if err := syscall.Statfs(cfg.DataDir, &fs); err != nil {
			return nil, fmt.Errorf("data directory %s: %w", cfg.DataDir, err)
		}
		quota = int64(fs.Blocks) * fs.Bsize / 2
	}
	// Blobs leaving the store are dropped from the cluster's holders
	// (cluster.Node.DropSoon: it never blocks the store and never loses a
	// notice). The cluster node comes after the store.
	var clusterNode atomic.Pointer[cluster.Node]
	onRemove := func(d v1.Hash) {
		if c := clusterNode.Load(); c != nil {
			c.DropSoon(d)
		}
	}
	st, err := store.New(filepath.Join(cfg.DataDir, "store"), store.WithQuota(quota), store.WithLogger(log), store.WithOnRemove(onRemove))
	if err != nil {
		return nil, err
	}
	cat, err := catalog.Open(filepath.Join(cfg.DataDir, "catalog.json"))
	if err != nil {
		return nil, err
	}
	upCfg := upstream.DefaultConfig()
	upCfg.Insecure = cfg.Insecure
	upCfg.Auths = cfg.Auths
	up, err := upstream.New(upCfg, log)
	if err != nil {
		return nil, err
	}
	reg := prometheus.NewRegistry()
	metrics.RegisterRuntime(reg)
	m := metrics.NewPuller(reg)
	metrics.RegisterStore(reg, st.Usage)

	res, err := catalog.NewResolver(cfg.Resolver, cat, up, log, nil)
	if err != nil {
		return nil, err
	}
	pn, err := newPeerNode(cfg.Peer, cfg.DataDir, st, up, reg, m.FetchedBytes, log)
	if err != nil {
		return nil, err
	}
	clusterNode.Store(pn.cluster)
	fcfg := fetch.DefaultConfig()
	fcfg.BackgroundRate, fcfg.DemandQuiet = cfg.BackgroundRate, cfg.BackgroundQuiet
	var source puller.Source = up
	if pn.swarm != nil {
		// Blobs come through the peer network, which counts its bytes by
		// origin (peer, upstream) and tells the cluster what is complete.
		source = pn.swarm
		fcfg.SourceName, fcfg.CountBytes, fcfg.OnCommit = "cluster", false, pn.swarm.OnCommit
		// The peer network serves whole blobs: the ranges lazy readers
		// wait for come from the origin, the rest through the peers.
		fcfg.Ranges = up
	}
	f, err := fetch.New(fcfg, st, source, up, m, log)
	if err != nil {
		pn.cluster.Close()
		return nil, err
	}
	mcfg := mirror.DefaultConfig()
	if cfg.DefaultRegistry != "" {
		mcfg.DefaultRegistry = cfg.DefaultRegistry
	}
	mir, err := mirror.New(mcfg, res, f, m, log)
	if err != nil {
		return nil, err
	}
	n = &node{cfg: cfg, log: log, store: st, upstream: up, fetcher: f, peer: pn}
	defer func(n *node) { // n itself is nil once an error is returned
		if err != nil {
			n.closeListeners()
			pn.cluster.Close()
			if n.lazy != nil {
				n.lazy.Close()
			}
		}
	}(n)
	mirrorLn, err := n.listen("mirror", "tcp", cfg.MirrorAddr, mir)
	if err != nil {
		return nil, err
	}
	var gatherer prometheus.Gatherer = reg
	if cfg.Snapshotter.Socket != "" {
		sc := cfg.Snapshotter
		if sc.Root == "" {
			sc.Root = filepath.Join(cfg.DataDir, "stargz")
		}
		if sc.Mirror == "" {
			sc.Mirror = "http://" + mirrorLn.Addr().String()
		}
		if n.lazy, err = snapshotter.New(sc, metrics.NewLazyload(reg), log); err != nil {
			return nil, err
		}
		gatherer = prometheus.Gatherers{reg, metrics.StargzGatherer()}
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(gatherer, promhttp.HandlerOpts{Registry: reg}))
	if _, err := n.listen("metrics", "tcp", cfg.MetricsAddr, mux); err != nil {
		return nil, err
	}
	pf := prefetch.New(res, f, st.Stat, cfg.Concurrency)
	n.api = api.NewServer(api.Deps{
		Store:      st,
		Catalog:    cat,
		Prefetcher: pf,
		Importer:   ctrimport.New(mirrorLn.Addr().String(), log),
		Status:     api.Status{Version: version, DataDir: cfg.DataDir, MirrorAddr: mirrorLn.Addr().String(), MetricsAddr: n.Addr("metrics")},
		Log:        log,
		Ctx:        ctx,
	})
	network := "tcp"
	if strings.Contains(cfg.APIAddr, "/") {
		network = "unix"
	}
	n.api.Handle("GET /api/v1/peers", peersHandler(pn.cluster))
	n.api.Handle("POST /api/v1/peers/remove", removePeerHandler(pn.cluster))
	if n.predict, err = newPredictor(cfg.Predict, cfg.DataDir, pn.cluster.Self().ID, pn.cluster, pf, f, st, reg, log); err != nil {
		return nil, err
	}
	if n.predict != nil {
		h := n.predict.Handler()
		for _, route := range []string{live.RouteEvents, live.RouteHints, live.RouteJobs, live.RouteList, live.RouteActive} {
			n.api.Handle(route, h)
		}
	}
	if _, err := n.listen("api", network, cfg.APIAddr, n.api); err != nil {
		return nil, err
	}
	if pn.handler != nil {
		ln, err := n.listen("peer", "tcp", cfg.Peer.PeerAddr, pn.handler)
		if err != nil {
			return nil, err
		}
		// The peer API is mutual TLS: only nodes with a certificate of the
		// cluster CA get past the handshake.
		n.servers[len(n.servers)-1].ln = tls.NewListener(ln, pn.tls.Server)
	}
	return n, nil
}

// Addr returns the address a server listens on.
func (n *node) Addr(name string) string {
	for _, s := range n.servers {
		if s.name == name {
			return s.ln.Addr().String()
		}
	}
	return ""
}

func (n *node) listen(name, network, addr string, h http.Handler) (net.Listener, error) {
	ln, err := net.Listen(network, addr)
	if err != nil {
		return nil, fmt.Errorf("%s: listen on %s: %w", name, addr, err)
	}
	if network == "unix" {
		if err := os.Chmod(addr, 0o660); err != nil {
			ln.Close()
			return nil, fmt.Errorf("%s: %w", name, err)
		}
	}
	n.servers = append(n.servers, &server{name: name, ln: ln, srv: &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(n.log.Handler(), slog.LevelWarn),
	}})
	return ln, nil
}

func (n *node) closeListeners() {
	for _, s := range n.servers {
		s.ln.Close()
	}
}

// Run serves until ctx is done, then shuts down: listeners close, requests in
// flight get 5 s to finish, fetches stop with their partial blobs kept.
func (n *node) Run(ctx context.Context) error {
	g, gctx := errgroup.WithContext(ctx)
	for _, s := range n.servers {
		n.log.Info("listening", "server", s.name, "addr", s.ln.Addr().String())
		g.Go(func() error {
			if err := s.srv.Serve(s.ln); !errors.Is(err, http.ErrServerClosed) {
				return fmt.Errorf("%s server: %w", s.name, err)
			}
			return nil
		})
	}
	// The cluster stops after the predictor, whose last flush (the events of
	// the current minute) needs it.
	clusterCtx, stopCluster := context.WithCancel(context.WithoutCancel(gctx))
	predictDone := make(chan struct{})
	g.Go(func() error {
		return n.peer.cluster.Run(clusterCtx)
	})
	g.Go(func() error {
		<-gctx.Done()
		<-predictDone
		stopCluster()
		return nil
	})
	if n.predict != nil {
		g.Go(func() error {
			defer close(predictDone)
			return n.predict.Run(gctx)
		})
		if addr := n.cfg.Predict.ContainerdEvents; addr != "" {
			g.Go(func() error { return live.WatchContainerd(gctx, addr, n.predict.Started, n.log) })
		}
	} else {
		close(predictDone)
	}
	if n.lazy != nil {
		g.Go(func() error { return n.lazy.Run(gctx) })
	}
	g.Go(func() error {
		<-gctx.Done()
		shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		for _, s := range n.servers {
			s.srv.Shutdown(shutdown)
		}
		n.api.Wait()
		n.fetcher.Close()
		n.upstream.Close()
		if n.peer.swarm != nil {
			n.peer.swarm.Close()
		}
		return nil
	})
	return g.Wait()
}

func removeStaleSocket(path string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("api socket directory: %w", err)
	}
	if c, err := net.Dial("unix", path); err == nil {
		c.Close()
		return fmt.Errorf("api socket %s: another thaw daemon is running", path)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("api socket %s: %w", path, err)
	}
	return nil
}
