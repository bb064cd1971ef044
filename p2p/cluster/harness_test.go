package cluster

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/goleak"

	"github.com/thaw-dev/thaw/p2p"
	"github.com/thaw-dev/thaw/p2p/certs"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func fakeTLSConfig() *tls.Config { return &tls.Config{} }

// harness runs in-process nodes on loopback, each with its own peer HTTPS
// server and a certificate of the harness's CA.
type harness struct {
	t        *testing.T
	caDir    string
	resolver *fakeResolver
}

func newHarness(t *testing.T) *harness {
	t.Helper()
	caDir := filepath.Join(t.TempDir(), "ca")
	if err := certs.InitCA(caDir); err != nil {
		t.Fatal(err)
	}
	return &harness{t: t, caDir: caDir, resolver: &fakeResolver{names: map[string][]string{}}}
}

// tlsFor issues and loads a certificate for a node of the harness's CA.
func (h *harness) tlsFor(name string) *certs.TLS {
	h.t.Helper()
	dir := filepath.Join(h.t.TempDir(), "certs-"+name)
	if err := certs.Issue(h.caDir, dir, name, []string{name + ".thaw.test"}); err != nil {
		h.t.Fatal(err)
	}
	c, err := certs.Load(dir)
	if err != nil {
		h.t.Fatal(err)
	}
	return c
}

type testNode struct {
	h        *harness
	id       p2p.NodeID
	cfg      Config
	node     *Node
	srv      *httptest.Server
	reg      *prometheus.Registry
	cancel   context.CancelFunc
	done     chan error
	stopOnce sync.Once

	mu        sync.Mutex
	inventory []Holding
	srvLog    logBuffer // the peer server's errors
}

// nodeOpt changes a test node's Config before New.
type nodeOpt func(*Config)

func join(addrs ...string) nodeOpt { return func(c *Config) { c.Join = addrs } }

func onIP(ip string) nodeOpt {
	return func(c *Config) {
		c.RaftAddr = net.JoinHostPort(ip, "0")
		c.PeerAddr = net.JoinHostPort(ip, "0")
	}
}

func testConfig() Config {
	c := DefaultConfig()
	c.Voters = 3
	c.HeartbeatInterval = 100 * time.Millisecond
	c.ExpireAfter = 1500 * time.Millisecond
	c.RequestTimeout = 2 * time.Second
	c.JoinTimeout = 10 * time.Second
	c.JoinBackoff = 300 * time.Millisecond
	c.RaftHeartbeatTimeout = 300 * time.Millisecond
	c.RaftElectionTimeout = 300 * time.Millisecond
	c.RaftLeaderLeaseTimeout = 200 * time.Millisecond
	c.RaftCommitTimeout = 10 * time.Millisecond
	c.Logger = testLogger()
	return c
}

// testLogger discards logs unless THAW_TEST_LOG is set.
func testLogger() *slog.Logger {
	if os.Getenv("THAW_TEST_LOG") == "" {
		return slog.New(slog.DiscardHandler)
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// start runs a new node id; it is stopped (gracefully) when the test ends.
func (h *harness) start(id string, opts ...nodeOpt) *testNode {
	h.t.Helper()
	cfg := testConfig()
	cfg.NodeID = p2p.NodeID(id)
	cfg.DataDir = filepath.Join(h.t.TempDir(), "data-"+id)
	cfg.RaftAddr = "127.0.0.1:0"
	cfg.PeerAddr = "127.0.0.1:0"
	cfg.TLS = h.tlsFor(id)
	cfg.Resolver = h.resolver
	for _, o := range opts {
		o(&cfg)
	}
	tn := &testNode{h: h, id: cfg.NodeID}
	tn.run(cfg)
	h.t.Cleanup(tn.stop)
	return tn
}

// run starts the peer server on cfg.PeerAddr (a free port if 0) and the
// node; cfg.PeerAddr and cfg.RaftAddr are then the bound addresses, kept
// for a restart.
func (tn *testNode) run(cfg Config) {
	t := tn.h.t
	t.Helper()
	ln, err := net.Listen("tcp", cfg.PeerAddr)
	if err != nil {
		t.Fatalf("%s: peer listener: %v", tn.id, err)
	}
	cfg.PeerAddr = ln.Addr().String()
	cfg.Inventory = tn.holdings
	tn.reg = prometheus.NewRegistry()
	cfg.Registerer = tn.reg
	node, err := New(cfg)
	if err != nil {
		ln.Close()
		t.Fatalf("%s: New: %v", tn.id, err)
	}
	cfg.RaftAddr = node.raftAddr
	tn.cfg, tn.node = cfg, node

	mux := http.NewServeMux()
	mux.Handle("/p2p/v1/cluster/", node.Handler())
	srv := httptest.NewUnstartedServer(mux)
	srv.Listener.Close()
	srv.Listener = ln
	srv.TLS = cfg.TLS.Server.Clone()
	srv.EnableHTTP2 = true
	srv.Config.ErrorLog = log.New(&tn.srvLog, "", 0) // refused handshakes
	srv.StartTLS()
	tn.srv = srv

	ctx, cancel := context.WithCancel(context.Background())
	tn.cancel, tn.done = cancel, make(chan error, 1)
	tn.stopOnce = sync.Once{}
	go func() { tn.done <- node.Run(ctx) }()
}

func (tn *testNode) holdings() []Holding {
	tn.mu.Lock()
	defer tn.mu.Unlock()
	return slices.Clone(tn.inventory)
}

func (tn *testNode) setInventory(hs ...Holding) {
	tn.mu.Lock()
	defer tn.mu.Unlock()
	tn.inventory = hs
}

// stop stops the node gracefully (it leaves), then its peer server.
func (tn *testNode) stop() {
	tn.stopOnce.Do(func() {
		tn.cancel()
		if err := <-tn.done; err != nil {
			tn.h.t.Errorf("%s: Run: %v", tn.id, err)
		}
		tn.srv.Close()
	})
}

// kill stops the node as a crash would: its peer server goes first and it
// does not leave. Raft is shut down (its goroutines must not outlive the
// test) and its connections closed, which is what peers see of a crash.
func (tn *testNode) kill() {
	tn.stopOnce.Do(func() {
		tn.node.crash.Store(true)
		tn.srv.Close()
		tn.cancel()
		if err := <-tn.done; err != nil {
			tn.h.t.Errorf("%s: Run: %v", tn.id, err)
		}
	})
}

// restart runs the node again with the same data directory and addresses.
func (tn *testNode) restart() {
	tn.h.t.Helper()
	tn.run(tn.cfg)
}

func (tn *testNode) waitJoined() {
	tn.h.t.Helper()
	eventually(tn.h.t, 20*time.Second, func() error {
		if !tn.node.joined.Load() {
			return fmt.Errorf("%s has not joined (%d attempts)", tn.id, tn.node.joinAttempts.Load())
		}
		return nil
	})
}

// eventually polls cond until it returns nil, failing the test with its
// last error after timeout.
func eventually(t *testing.T, timeout time.Duration, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not within %s: %v", timeout, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func ctxT(t *testing.T) context.Context { return t.Context() }

// logBuffer collects a node's logs for a test to search.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func (b *logBuffer) contains(s string) bool { return strings.Contains(b.String(), s) }

func (b *logBuffer) logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(b, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

type fakeResolver struct {
	mu    sync.Mutex
	names map[string][]string
}

func (r *fakeResolver) set(name string, addrs ...string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.names[name] = addrs
}

func (r *fakeResolver) LookupHost(ctx context.Context, host string) ([]string, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if a, ok := r.names[host]; ok {
		return slices.Clone(a), nil
	}
	return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
}

// gauge returns the value of the metric name with the given labels in reg,
// and whether it is there.
func gauge(t *testing.T, reg *prometheus.Registry, name string, labels map[string]string) (float64, bool) {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metric:
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if v, ok := labels[lp.GetName()]; ok && v != lp.GetValue() {
					continue metric
				}
			}
			return value(m), true
		}
	}
	return 0, false
}

func value(m *dto.Metric) float64 {
	switch {
	case m.Gauge != nil:
		return m.Gauge.GetValue()
	case m.Counter != nil:
		return m.Counter.GetValue()
	case m.Histogram != nil:
		return float64(m.Histogram.GetSampleCount())
	}
	return 0
}
