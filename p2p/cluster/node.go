package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	"go.etcd.io/bbolt"

	"github.com/thaw-dev/thaw/p2p"
)

// Node is this daemon's membership of the cluster: a Raft voter, or a
// client of the voters, as the leader decided when it joined. It implements
// p2p.Coordinator. Make one with New, run it with Run.
type Node struct {
	cfg     Config
	log     *slog.Logger
	fsm     *fsm
	live    *liveness
	metrics *metrics

	// Opened by New and owned by Run, which releases them when it returns
	// (Close does if Run never starts).
	stream   *tlsStream // nil when standalone
	store    *raftboltdb.BoltStore
	snaps    *raft.FileSnapshotStore
	raftAddr string // advertised Raft address
	hasState bool   // Raft state on disk at New: rejoin, never bootstrap
	client   *http.Client
	release  sync.Once

	raft   atomic.Pointer[raft.Raft] // set while this node runs Raft
	voter  atomic.Bool
	joined atomic.Bool
	booted atomic.Bool          // bootstrapped by BootstrapExpect
	view   atomic.Pointer[view] // voters and leader, as last told

	// outMu guards outgoing requests against the end of Run: requests hold
	// it for reading; Run takes it for writing to set stopped, so that no
	// connection is opened after it closes the idle ones.
	outMu   sync.RWMutex
	stopped bool

	joinSem chan struct{} // serialises the joins this node handles as leader
	kick    chan struct{} // asks the heartbeat loop to check membership now
	drops   *pendingDrops // blobs removed here, to drop from the cluster (see DropSoon)
	ran     atomic.Bool

	// Test hooks: pause heartbeats; on stop, skip leaving (a crash).
	pauseHeartbeats atomic.Bool
	crash           atomic.Bool
	joinAttempts    atomic.Int64
}

// view is where a node sends requests it cannot serve: the leader first,
// then the other voters. Voters read it from their own state; clients
// learn it from join and heartbeat answers.
type view struct {
	Leader p2p.NodeID   `json:"leader,omitempty"`
	Voters []p2p.Member `json:"voters"`
}

// New checks cfg, opens the Raft stores in cfg.DataDir and, unless
// standalone, listens on cfg.RaftAddr, so that a busy port or a locked data
// directory fails here. Nothing runs until Run.
func New(cfg Config) (*Node, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Resolver == nil {
		cfg.Resolver = net.DefaultResolver
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	n := &Node{
		cfg:     cfg,
		log:     logger.With("component", "cluster"),
		fsm:     newFSM(),
		live:    newLiveness(),
		kick:    make(chan struct{}, 1),
		joinSem: make(chan struct{}, 1),
		drops:   newPendingDrops(),
	}
	if err := n.open(); err != nil {
		n.releaseAll()
		return nil, err
	}
	m, err := newMetrics(cfg.Registerer, n)
	if err != nil {
		n.releaseAll()
		return nil, err
	}
	n.metrics = m
	return n, nil
}

func (n *Node) open() error {
	if err := os.MkdirAll(n.cfg.DataDir, 0o700); err != nil {
		return fmt.Errorf("cluster data directory: %w", err)
	}
	dbPath := filepath.Join(n.cfg.DataDir, "raft.db")
	store, err := raftboltdb.New(raftboltdb.Options{
		Path: dbPath,
		// Another process holding the database fails New instead of
		// blocking it forever.
		BoltOptions: &bbolt.Options{Timeout: 2 * time.Second, NoFreelistSync: true},
	})
	if err != nil {
		return fmt.Errorf("open Raft store %s (is another thaw daemon using %s?): %w", dbPath, n.cfg.DataDir, err)
	}
	n.store = store
	snaps, err := raft.NewFileSnapshotStoreWithLogger(n.cfg.DataDir, 2, newHCLogger(n.log, "raft-snapshots"))
	if err != nil {
		return fmt.Errorf("open Raft snapshots in %s: %w", n.cfg.DataDir, err)
	}
	n.snaps = snaps
	if n.hasState, err = raft.HasExistingState(store, store, snaps); err != nil {
		return fmt.Errorf("read Raft state in %s: %w", n.cfg.DataDir, err)
	}
	if n.cfg.standalone() {
		n.raftAddr = "standalone/" + string(n.cfg.NodeID)
		return nil
	}
	stream, err := listenStream(n.cfg.RaftAddr, n.cfg.TLS.Server, n.cfg.TLS.Client)
	if err != nil {
		return fmt.Errorf("listen for Raft on %s: %w", n.cfg.RaftAddr, err)
	}
	n.stream = stream
	n.raftAddr = stream.Addr().String()
	n.client = &http.Client{Transport: &http.Transport{
		TLSClientConfig:     n.cfg.TLS.Client.Clone(),
		DialContext:         (&net.Dialer{Timeout: n.cfg.RequestTimeout, KeepAlive: 30 * time.Second}).DialContext,
		TLSHandshakeTimeout: n.cfg.RequestTimeout,
		ForceAttemptHTTP2:   true,
		MaxIdleConnsPerHost: 16,
		IdleConnTimeout:     90 * time.Second,
	}}
	return nil
}

// Close releases what New opened, for a Node that will not run: Run
// releases them itself when it returns, and Close does nothing once Run has
// started. A closed Node cannot run.
func (n *Node) Close() error {
	if !n.ran.CompareAndSwap(false, true) {
		return nil
	}
	return n.releaseAll()
}

func (n *Node) releaseAll() error {
	var errs []error
	n.release.Do(func() {
		n.outMu.Lock()
		n.stopped = true
		n.outMu.Unlock()
		if n.client != nil {
			n.client.CloseIdleConnections()
		}
		if n.stream != nil {
			errs = append(errs, n.stream.Close())
		}
		if n.store != nil {
			errs = append(errs, n.store.Close())
		}
	})
	return errors.Join(errs...)
}

// Run joins the cluster (bootstrapping a one-voter cluster when Join is
// empty and DataDir holds no Raft state), retrying with backoff until it
// succeeds or ctx is done; then heartbeats until ctx is done. Then it leaves
// gracefully: it stops heartbeating, drops its holdings and seeder roles,
// hands leadership over if it leads, and shuts Raft down. It returns nil
// after a graceful stop, and an error only when it cannot start.
func (n *Node) Run(ctx context.Context) error {
	if !n.ran.CompareAndSwap(false, true) {
		return ErrAlreadyRan
	}
	defer n.releaseAll()
	rr, err := n.startRaft()
	if err != nil {
		return err
	}
	defer rr.stop()

	if err := n.joinLoop(ctx); err != nil {
		return nil // ctx done before joining
	}
	if !n.voter.Load() {
		n.log.Info("joined as a client of the voters; Raft stops here")
		rr.stop()
	}
	dropsDone := make(chan struct{})
	go func() {
		defer close(dropsDone)
		n.dropLoop(ctx)
	}()
	n.heartbeatLoop(ctx)
	<-dropsDone
	n.leave()
	return nil
}

// raftRun is one run of Raft on this node and the goroutines watching it.
type raftRun struct {
	n      *Node
	r      *raft.Raft
	trans  raft.Transport
	obs    *raft.Observer
	cancel context.CancelFunc
	wg     sync.WaitGroup
	once   sync.Once
}

func (n *Node) startRaft() (*raftRun, error) {
	var trans raft.Transport
	if n.cfg.standalone() {
		_, trans = raft.NewInmemTransport(raft.ServerAddress(n.raftAddr))
	} else {
		trans = raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
			Stream:  n.stream,
			MaxPool: 3,
			Timeout: 10 * time.Second,
			Logger:  newHCLogger(n.log, "raft-net"),
		})
	}
	logs, err := raft.NewLogCache(256, n.store)
	if err != nil {
		return nil, fmt.Errorf("raft log cache: %w", err)
	}
	r, err := raft.NewRaft(n.cfg.raftConfig(n.log), n.fsm, logs, n.store, n.snaps, trans)
	if err != nil {
		closeTransport(trans)
		return nil, fmt.Errorf("start Raft: %w", err)
	}
	if !n.hasState && len(n.cfg.Join) == 0 {
		n.log.Info("bootstrapping a new one-voter cluster", "raftAddr", n.raftAddr)
		boot := raft.Configuration{Servers: []raft.Server{{Suffrage: raft.Voter, ID: raft.ServerID(n.cfg.NodeID), Address: trans.LocalAddr()}}}
		if err := r.BootstrapCluster(boot).Error(); err != nil {
			r.Shutdown().Error()
			closeTransport(trans)
			return nil, fmt.Errorf("bootstrap Raft: %w", err)
		}
	} else if n.hasState {
		n.log.Info("rejoining with the Raft state in the data directory", "dataDir", n.cfg.DataDir)
	}
	n.raft.Store(r)

	ctx, cancel := context.WithCancel(context.Background())
	obsCh := make(chan raft.Observation, 16)
	rr := &raftRun{n: n, r: r, trans: trans, cancel: cancel,
		obs: raft.NewObserver(obsCh, false, func(o *raft.Observation) bool {
			_, ok := o.Data.(raft.LeaderObservation)
			return ok
		})}
	r.RegisterObserver(rr.obs)
	rr.wg.Go(func() { n.watchLeader(ctx, obsCh) })
	rr.wg.Go(func() { n.leaderDuties(ctx, r) })
	return rr, nil
}

// stop shuts this run of Raft down; it is idempotent.
func (rr *raftRun) stop() {
	rr.once.Do(func() {
		rr.n.raft.Store(nil)
		rr.cancel()
		rr.wg.Wait()
		rr.r.DeregisterObserver(rr.obs)
		if err := rr.r.Shutdown().Error(); err != nil {
			rr.n.log.Warn("Raft shutdown", "err", err)
		}
		closeTransport(rr.trans)
	})
}

func closeTransport(t raft.Transport) {
	if c, ok := t.(raft.WithClose); ok {
		c.Close()
	}
	if nt, ok := t.(*raft.NetworkTransport); ok {
		nt.CloseStreams()
	}
}

// watchLeader counts leader changes as this node observes them.
func (n *Node) watchLeader(ctx context.Context, ch <-chan raft.Observation) {
	var last raft.ServerID
	for {
		select {
		case <-ctx.Done():
			return
		case o := <-ch:
			lo := o.Data.(raft.LeaderObservation)
			if lo.LeaderID != "" && lo.LeaderID != last {
				n.metrics.leaderChanges.Inc()
				n.log.Info("Raft leader changed", "leader", lo.LeaderID, "leaderAddr", lo.LeaderAddr)
				last = lo.LeaderID
			}
		}
	}
}

// joinLoop joins, retrying with backoff until it succeeds or ctx is done.
func (n *Node) joinLoop(ctx context.Context) error {
	wait := 100 * time.Millisecond
	for attempt := 1; ; attempt++ {
		err := n.join(ctx)
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if booted, berr := n.maybeBootstrap(ctx); berr != nil {
			n.log.Warn("bootstrapping failed", "err", berr)
		} else if booted {
			wait = 100 * time.Millisecond
			continue
		}
		level := slog.LevelDebug
		if attempt >= 2 || errors.Is(err, errCertificate) {
			level = slog.LevelWarn
		}
		n.log.Log(ctx, level, "joining the cluster failed; retrying", "attempt", attempt, "retryIn", wait, "join", n.cfg.Join, "err", err)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
		wait = min(2*wait, n.cfg.JoinBackoff)
	}
}

// join asks the leader to add this node, with its inventory, and learns
// whether it is a voter.
func (n *Node) join(ctx context.Context) error {
	n.joinAttempts.Add(1)
	req := joinRequest{
		Member:  memberRecord{ID: n.cfg.NodeID, PeerAddr: n.cfg.PeerAddr, RaftAddr: n.raftAddr},
		CanVote: n.raft.Load() != nil,
	}
	if n.cfg.Inventory != nil {
		req.Holdings = n.cfg.Inventory()
	}
	var resp joinResponse
	if err := n.call(ctx, routeJoin, "", req, &resp, n.cfg.JoinTimeout); err != nil {
		return err
	}
	n.voter.Store(resp.Member.Voter)
	n.view.Store(&resp.View)
	n.joined.Store(true)
	n.log.Info("joined the cluster", "voter", resp.Member.Voter, "leader", resp.View.Leader, "holdings", len(req.Holdings))
	return nil
}

// heartbeatLoop tells the leader this node is alive every
// HeartbeatInterval until ctx is done, and rejoins when the answer says the
// leader does not know it (any more).
func (n *Node) heartbeatLoop(ctx context.Context) {
	t := time.NewTicker(n.cfg.HeartbeatInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-n.kick:
		}
		if n.pauseHeartbeats.Load() {
			continue
		}
		var resp heartbeatResponse
		if err := n.call(ctx, routeHeartbeat, "", nodeRequest{Node: n.cfg.NodeID}, &resp, n.cfg.RequestTimeout); err != nil {
			n.log.Debug("heartbeat failed", "err", err)
			continue
		}
		n.view.Store(&resp.View)
		if resp.Known {
			continue
		}
		n.log.Info("the leader does not know this node (expired?); rejoining with its inventory")
		if err := n.join(ctx); err != nil && ctx.Err() == nil {
			n.log.Warn("rejoining failed; retrying with the next heartbeat", "err", err)
		}
	}
}

// checkMembership makes the heartbeat loop run now, after a write was
// refused because this node is not a member.
func (n *Node) checkMembership() {
	select {
	case n.kick <- struct{}{}:
	default:
	}
}

// leave drops this node's holdings and seeder roles and, if it leads, hands
// leadership to another voter, all within RequestTimeout.
func (n *Node) leave() {
	n.joined.Store(false)
	if n.crash.Load() {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), n.cfg.RequestTimeout)
	defer cancel()
	if err := n.call(ctx, routeLeave, "", nodeRequest{Node: n.cfg.NodeID}, nil, n.cfg.RequestTimeout); err != nil {
		n.log.Warn("leaving the cluster failed; the leader will expire this node", "err", err)
	}
	r := n.raft.Load()
	if r == nil || r.State() != raft.Leader || len(n.fsm.voters()) < 2 {
		return
	}
	if err := waitFuture(ctx, r.LeadershipTransfer()); err != nil {
		n.log.Warn("handing Raft leadership over failed; the voters will elect a leader", "err", err)
	}
}

func (n *Node) isLeader() bool {
	r := n.raft.Load()
	return r != nil && r.State() == raft.Leader
}

// waitFuture waits for f, or for ctx: Raft futures take no context.
func waitFuture(ctx context.Context, f raft.Future) error {
	done := make(chan error, 1)
	go func() { done <- f.Error() }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// remaining is how long ctx has left, or def without a deadline.
func remaining(ctx context.Context, def time.Duration) time.Duration {
	if dl, ok := ctx.Deadline(); ok {
		return max(time.Until(dl), time.Millisecond)
	}
	return def
}
