package cluster

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/hashicorp/raft"

	"github.com/thaw-dev/thaw/p2p"
	"github.com/thaw-dev/thaw/p2p/certs"
)

// formCluster starts n nodes: the first bootstraps, the others join
// through it, all at once. With the default Voters (3) the first three
// to be admitted are voters.
func formCluster(h *harness, n int, opts ...nodeOpt) []*testNode {
	h.t.Helper()
	first := h.start("n0", opts...)
	nodes := []*testNode{first}
	for i := 1; i < n; i++ {
		nodes = append(nodes, h.start(fmt.Sprintf("n%d", i), append(opts, join(first.cfg.PeerAddr))...))
	}
	for _, tn := range nodes {
		tn.waitJoined()
	}
	return nodes
}

func leaderOf(t *testing.T, nodes ...*testNode) *testNode {
	t.Helper()
	var leader *testNode
	eventually(t, 10*time.Second, func() error {
		for _, tn := range nodes {
			if tn.node.isLeader() {
				leader = tn
				return nil
			}
		}
		return errors.New("no leader among the nodes")
	})
	return leader
}

func roles(nodes []*testNode) (voters, clients []*testNode) {
	for _, tn := range nodes {
		if tn.node.Self().Voter {
			voters = append(voters, tn)
		} else {
			clients = append(clients, tn)
		}
	}
	return voters, clients
}

// blobEverywhere polls Blob on every node until check passes on all.
func blobEverywhere(t *testing.T, nodes []*testNode, d v1.Hash, timeout time.Duration, check func(p2p.BlobState) error) {
	t.Helper()
	eventually(t, timeout, func() error {
		for _, tn := range nodes {
			st, err := tn.node.Blob(ctxT(t), d)
			if err != nil {
				return fmt.Errorf("%s: Blob: %w", tn.id, err)
			}
			if err := check(st); err != nil {
				return fmt.Errorf("%s: %w (state %+v)", tn.id, err, st)
			}
		}
		return nil
	})
}

func holders(st p2p.BlobState) map[p2p.NodeID]bool {
	m := map[p2p.NodeID]bool{}
	for _, h := range st.Holders {
		m[h.Node] = h.Complete
	}
	return m
}

func wantHolders(want map[p2p.NodeID]bool) func(p2p.BlobState) error {
	return func(st p2p.BlobState) error {
		if got := holders(st); !reflect.DeepEqual(got, want) && !(len(got) == 0 && len(want) == 0) {
			return fmt.Errorf("holders %v, want %v", got, want)
		}
		return nil
	}
}

func TestSingleNodeBootstrapAndRestart(t *testing.T) {
	h := newHarness(t)
	a := h.start("a", func(c *Config) { c.ExpireAfter = time.Minute })
	a.waitJoined()
	ctx := ctxT(t)
	if self := a.node.Self(); !self.Voter || self.ID != "a" || self.RaftAddr != a.cfg.RaftAddr {
		t.Errorf("Self = %+v", self)
	}
	if id, addr := a.node.Leader(); id != "a" || addr != a.cfg.PeerAddr {
		t.Errorf("Leader = %s %s", id, addr)
	}
	st, err := a.node.ClaimSeeder(ctx, dA, 10)
	if err != nil || st.Seeder != "a" {
		t.Fatalf("ClaimSeeder = %+v, %v", st, err)
	}
	// State of another member, which a restart must keep: the local join
	// leaves it alone.
	ghost := memberRecord{ID: "ghost", PeerAddr: "127.0.0.1:1"}
	if _, err := a.node.applyLocal(ctx, command{Op: opJoin, Member: &ghost, Holdings: []Holding{{Digest: dB, Size: 7, Complete: true}}}); err != nil {
		t.Fatal(err)
	}
	before := a.node.raft.Load().LastIndex()

	a.kill()
	a.setInventory(Holding{Digest: dA, Size: 10, Complete: true})
	a.restart()
	if !a.node.hasState {
		t.Fatal("restarted node found no Raft state")
	}
	a.waitJoined()
	if idx := a.node.raft.Load().LastIndex(); idx <= before {
		t.Errorf("log index after restart %d, before %d: log not kept", idx, before)
	}
	st, err = a.node.Blob(ctx, dB)
	if err != nil || !reflect.DeepEqual(holders(st), map[p2p.NodeID]bool{"ghost": true}) || st.Size != 7 {
		t.Errorf("ghost's blob after restart = %+v, %v", st, err)
	}
	// The rejoin replaced a's own holdings with its inventory; the seeder
	// role of the crashed run is gone.
	st, err = a.node.Blob(ctx, dA)
	if err != nil || st.Seeder != "" || !reflect.DeepEqual(holders(st), map[p2p.NodeID]bool{"a": true}) {
		t.Errorf("a's blob after restart = %+v, %v", st, err)
	}
	ms, err := a.node.Members(ctx)
	if err != nil || len(ms) != 2 || ms[0].ID != "a" || !ms[0].Alive || !ms[0].Voter {
		t.Errorf("Members = %+v, %v", ms, err)
	}

	// A graceful stop drops the holdings; the inventory brings them back.
	a.stop()
	a.setInventory(Holding{Digest: dB, Size: 7})
	a.restart()
	a.waitJoined()
	st, err = a.node.Blob(ctx, dB)
	if err != nil || !reflect.DeepEqual(holders(st), map[p2p.NodeID]bool{"ghost": true, "a": false}) {
		t.Errorf("after a graceful restart = %+v, %v", st, err)
	}
	if v, _ := gauge(t, a.reg, "thaw_raft_is_leader", nil); v != 1 {
		t.Errorf("thaw_raft_is_leader = %v", v)
	}
}

func TestStandalone(t *testing.T) {
	cfg := testConfig()
	cfg.NodeID = "solo"
	cfg.DataDir = t.TempDir()
	run := func() (*Node, func()) {
		n, err := New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- n.Run(ctx) }()
		eventually(t, 10*time.Second, func() error {
			if !n.joined.Load() {
				return errors.New("not joined")
			}
			return nil
		})
		return n, func() {
			cancel()
			if err := <-done; err != nil {
				t.Error(err)
			}
		}
	}
	n, stop := run()
	if err := n.Announce(ctxT(t), dA, 3, true); err != nil {
		t.Fatal(err)
	}
	if err := n.Run(ctxT(t)); !errors.Is(err, ErrAlreadyRan) {
		t.Errorf("second Run = %v", err)
	}
	stop()
	n, stop = run()
	defer stop()
	if !n.hasState {
		t.Error("no state after restart")
	}
	if st, err := n.ClaimSeeder(ctxT(t), dB, 1); err != nil || st.Seeder != "solo" {
		t.Errorf("ClaimSeeder = %+v, %v", st, err)
	}
	if n.Handler() == nil {
		t.Error("no handler")
	}
	// A node that never runs is closed instead, which frees its data
	// directory for the next one.
	cfg.DataDir = t.TempDir()
	closed, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := closed.Close(); err != nil {
		t.Error(err)
	}
	if err := closed.Run(ctxT(t)); !errors.Is(err, ErrAlreadyRan) {
		t.Errorf("Run after Close = %v", err)
	}
	again, err := New(cfg)
	if err != nil {
		t.Fatalf("New after Close: %v", err)
	}
	again.Close()
}

func TestJoinViaOneAddress(t *testing.T) {
	h := newHarness(t)
	nodes := formCluster(h, 5)
	voters, clients := roles(nodes)
	if len(voters) != 3 || len(clients) != 2 {
		t.Fatalf("%d voters and %d clients, want 3 and 2", len(voters), len(clients))
	}
	for _, c := range clients {
		if c.node.raft.Load() != nil {
			t.Errorf("client %s runs Raft", c.id)
		}
	}
	leader := leaderOf(t, nodes...)
	cf := leader.node.raft.Load().GetConfiguration()
	if err := cf.Error(); err != nil {
		t.Fatal(err)
	}
	if n := len(cf.Configuration().Servers); n != 3 {
		t.Errorf("Raft configuration has %d servers, want 3", n)
	}
	// Every node agrees on the leader and sees every member alive.
	for _, tn := range nodes {
		eventually(t, 5*time.Second, func() error {
			if id, addr := tn.node.Leader(); id != leader.id || addr != leader.cfg.PeerAddr {
				return fmt.Errorf("%s: Leader() = %s %s, want %s", tn.id, id, addr, leader.id)
			}
			return nil
		})
		// A leader hears from a member within a heartbeat of taking over;
		// until then it knows no LastSeen.
		var ms []p2p.Member
		eventually(t, 5*time.Second, func() error {
			var err error
			if ms, err = tn.node.Members(ctxT(t)); err != nil {
				return fmt.Errorf("%s: Members: %v", tn.id, err)
			}
			if len(ms) != 5 {
				return fmt.Errorf("%s: %d members", tn.id, len(ms))
			}
			for _, m := range ms {
				if !m.Alive || m.LastSeen.IsZero() {
					return fmt.Errorf("%s sees %s not alive: %+v", tn.id, m.ID, m)
				}
			}
			return nil
		})
		for _, m := range ms {
			self := nodeByID(nodes, m.ID).node.Self()
			if m.Voter != self.Voter || m.PeerAddr != self.PeerAddr {
				t.Errorf("member %+v, node says %+v", m, self)
			}
		}
	}
	for _, l := range []struct {
		role, alive string
		want        float64
	}{{"voter", "true", 3}, {"client", "true", 2}, {"client", "false", 0}} {
		if v, ok := gauge(t, leader.reg, "thaw_cluster_members", map[string]string{"role": l.role, "alive": l.alive}); !ok || v != l.want {
			t.Errorf("leader's thaw_cluster_members{%s,%s} = %v (%v), want %v", l.role, l.alive, v, ok, l.want)
		}
	}
	for _, tn := range nodes {
		if tn == leader {
			continue
		}
		if _, ok := gauge(t, tn.reg, "thaw_cluster_members", nil); ok {
			t.Errorf("%s exports thaw_cluster_members without leading", tn.id)
		}
		if v, _ := gauge(t, tn.reg, "thaw_raft_is_leader", nil); v != 0 {
			t.Errorf("%s: thaw_raft_is_leader = %v", tn.id, v)
		}
	}
	if v, _ := gauge(t, leader.reg, "thaw_raft_commit_duration_seconds", nil); v == 0 {
		t.Error("leader observed no commit durations")
	}
}

func nodeByID(nodes []*testNode, id p2p.NodeID) *testNode {
	for _, tn := range nodes {
		if tn.id == id {
			return tn
		}
	}
	return nil
}

func TestJoinViaResolvedName(t *testing.T) {
	h := newHarness(t)
	// Five nodes on five loopback addresses and one port, behind one name,
	// as the pods of a headless Service are.
	ips := []string{"127.0.0.11", "127.0.0.12", "127.0.0.13", "127.0.0.14", "127.0.0.15"}
	ln, err := net.Listen("tcp", ips[0]+":0")
	if err != nil {
		t.Fatal(err)
	}
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	ln.Close()
	// The bootstrapping node comes last, so joins go through nodes that are
	// joining themselves first.
	h.resolver.set("thaw.thaw-system.svc", ips[4], ips[3], ips[2], ips[1], ips[0])
	at := func(ip string) nodeOpt {
		return func(c *Config) { c.PeerAddr = net.JoinHostPort(ip, port); c.RaftAddr = net.JoinHostPort(ip, "0") }
	}
	nodes := []*testNode{h.start("boot", at(ips[0]))}
	for i, ip := range ips[1:] {
		nodes = append(nodes, h.start(fmt.Sprintf("pod%d", i), at(ip), join("thaw.thaw-system.svc:"+port)))
	}
	for _, tn := range nodes {
		tn.waitJoined()
	}
	voters, clients := roles(nodes)
	if len(voters) != 3 || len(clients) != 2 {
		t.Fatalf("%d voters and %d clients, want 3 and 2", len(voters), len(clients))
	}
	ms, err := clients[0].node.Members(ctxT(t))
	if err != nil || len(ms) != 5 {
		t.Fatalf("Members = %d, %v", len(ms), err)
	}
}

func TestConcurrentClaimSeeder(t *testing.T) {
	h := newHarness(t)
	nodes := formCluster(h, 5)
	const claims = 16
	d := digest("contended")
	var (
		wg      sync.WaitGroup
		start   = make(chan struct{})
		answers = make([]p2p.BlobState, claims)
		errs    = make([]error, claims)
	)
	for i := range claims {
		tn := nodes[i%len(nodes)]
		wg.Go(func() {
			<-start
			answers[i], errs[i] = tn.node.ClaimSeeder(ctxT(t), d, 1<<20)
		})
	}
	close(start)
	wg.Wait()
	seeders := map[p2p.NodeID]int{}
	for i := range claims {
		if errs[i] != nil {
			t.Fatalf("claim %d from %s: %v", i, nodes[i%len(nodes)].id, errs[i])
		}
		seeders[answers[i].Seeder]++
	}
	if len(seeders) != 1 {
		t.Fatalf("seeders named: %v, want exactly one", seeders)
	}
	var winner p2p.NodeID
	for s := range seeders {
		winner = s
	}
	if winner == "" || nodeByID(nodes, winner) == nil {
		t.Fatalf("seeder %q is not a node", winner)
	}
	blobEverywhere(t, nodes, d, 5*time.Second, func(st p2p.BlobState) error {
		if st.Seeder != winner || st.Size != 1<<20 {
			return fmt.Errorf("seeder %q size %d, want %q", st.Seeder, st.Size, winner)
		}
		return nil
	})
}

func TestAnnounceDropVisibleEverywhere(t *testing.T) {
	h := newHarness(t)
	nodes := formCluster(h, 5)
	voters, clients := roles(nodes)
	ctx := ctxT(t)
	d := digest("layer")
	v, c := voters[1], clients[0]
	if err := v.node.Announce(ctx, d, 100, true); err != nil {
		t.Fatal(err)
	}
	if err := c.node.Announce(ctx, d, 100, false); err != nil {
		t.Fatal(err)
	}
	blobEverywhere(t, nodes, d, 5*time.Second, func(st p2p.BlobState) error {
		if err := wantHolders(map[p2p.NodeID]bool{v.id: true, c.id: false})(st); err != nil {
			return err
		}
		for _, hd := range st.Holders {
			if want := nodeByID(nodes, hd.Node).cfg.PeerAddr; hd.PeerAddr != want {
				return fmt.Errorf("holder %s at %s, want %s", hd.Node, hd.PeerAddr, want)
			}
		}
		if st.Size != 100 {
			return fmt.Errorf("size %d", st.Size)
		}
		return nil
	})
	// The client completes, the voter drops.
	if err := c.node.Announce(ctx, d, 100, true); err != nil {
		t.Fatal(err)
	}
	if err := v.node.Drop(ctx, d); err != nil {
		t.Fatal(err)
	}
	blobEverywhere(t, nodes, d, 5*time.Second, wantHolders(map[p2p.NodeID]bool{c.id: true}))
	if err := c.node.Drop(ctx, d); err != nil {
		t.Fatal(err)
	}
	blobEverywhere(t, nodes, d, 5*time.Second, func(st p2p.BlobState) error {
		if !reflect.DeepEqual(st, p2p.BlobState{Digest: d}) {
			return fmt.Errorf("want the zero state")
		}
		return nil
	})
}

func TestLeaderKilled(t *testing.T) {
	h := newHarness(t)
	nodes := formCluster(h, 4, func(c *Config) { c.ExpireAfter = 2 * time.Second })
	ctx := ctxT(t)
	old := leaderOf(t, nodes...)
	d := digest("held by the old leader")
	if err := old.node.Announce(ctx, d, 5, true); err != nil {
		t.Fatal(err)
	}
	var rest []*testNode
	for _, tn := range nodes {
		if tn != old {
			rest = append(rest, tn)
		}
	}
	blobEverywhere(t, rest, d, 5*time.Second, wantHolders(map[p2p.NodeID]bool{old.id: true}))

	old.kill()
	killed := time.Now()
	leader := leaderOf(t, rest...)
	if leader == old {
		t.Fatal("the killed node still leads")
	}
	// The state survived, and writes work again, from every node.
	st, err := leader.node.Blob(ctx, d)
	if err != nil || !reflect.DeepEqual(holders(st), map[p2p.NodeID]bool{old.id: true}) {
		t.Errorf("after the leader change: %+v, %v", st, err)
	}
	e := digest("after the election")
	for _, tn := range rest {
		if err := tn.node.Announce(ctx, e, 1, false); err != nil {
			t.Errorf("%s: Announce after the election: %v", tn.id, err)
		}
	}
	want := map[p2p.NodeID]bool{}
	for _, tn := range rest {
		want[tn.id] = false
	}
	blobEverywhere(t, rest, e, 5*time.Second, wantHolders(want))
	for _, tn := range rest {
		if tn.node.raft.Load() == nil {
			continue
		}
		if v, _ := gauge(t, tn.reg, "thaw_raft_leader_changes_total", nil); v < 1 {
			t.Errorf("%s counted %v leader changes", tn.id, v)
		}
	}

	// The old leader's holdings expire, not before ExpireAfter.
	blobEverywhere(t, rest, d, 10*time.Second, wantHolders(nil))
	if took := time.Since(killed); took < 2*time.Second {
		t.Errorf("holdings expired %s after the kill, before ExpireAfter", took)
	}
	ms, err := rest[0].node.Members(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range ms {
		if m.ID == old.id && (m.Alive || !m.Voter) {
			t.Errorf("old leader in Members: %+v, want a voter not alive", m)
		}
	}

	// The old leader comes back: it rejoins as the voter it was, from its
	// Raft state, without bootstrapping, and announces its inventory.
	old.setInventory(Holding{Digest: d, Size: 5, Complete: true})
	old.restart()
	old.waitJoined()
	if !old.node.hasState || !old.node.Self().Voter {
		t.Errorf("restarted old leader: state %v, voter %v", old.node.hasState, old.node.Self().Voter)
	}
	blobEverywhere(t, nodes, d, 5*time.Second, wantHolders(map[p2p.NodeID]bool{old.id: true}))
	cf := leaderOf(t, nodes...).node.raft.Load().GetConfiguration()
	if err := cf.Error(); err != nil || len(cf.Configuration().Servers) != 3 {
		t.Errorf("Raft configuration after the restart: %+v, %v", cf.Configuration(), err)
	}

	// With two voters gone the last one is a minority: no leader, and
	// every node fails fast with ErrNoLeader.
	leader = leaderOf(t, nodes...)
	leader.kill()
	var survivors []*testNode
	killedVoter := false
	for _, tn := range nodes {
		switch {
		case tn == leader:
		case tn.node.Self().Voter && !killedVoter:
			tn.kill()
			killedVoter = true
		default:
			survivors = append(survivors, tn)
		}
	}
	if len(survivors) != 2 {
		t.Fatalf("%d survivors, want a voter and a client", len(survivors))
	}
	var wg sync.WaitGroup
	for _, tn := range survivors {
		wg.Go(func() {
			start := time.Now()
			_, err := tn.node.ClaimSeeder(ctx, digest("minority"), 1)
			if !errors.Is(err, p2p.ErrNoLeader) {
				t.Errorf("%s: ClaimSeeder in a minority = %v, want ErrNoLeader", tn.id, err)
			}
			if took := time.Since(start); took > tn.cfg.RequestTimeout+time.Second {
				t.Errorf("%s: ClaimSeeder took %s, RequestTimeout is %s", tn.id, took, tn.cfg.RequestTimeout)
			}
		})
	}
	wg.Wait()
	// Leaving needs a leader: stop the survivors as crashes, not waiting
	// RequestTimeout for a leave that cannot be committed.
	for _, tn := range survivors {
		tn.kill()
	}
}

func TestSilentClientExpired(t *testing.T) {
	h := newHarness(t)
	nodes := formCluster(h, 3, func(c *Config) { c.Voters = 1 })
	voter, c1, c2 := nodes[0], nodes[1], nodes[2]
	ctx := ctxT(t)
	d, e := digest("seeded by c1"), digest("held by c1")
	if st, err := c1.node.ClaimSeeder(ctx, d, 9); err != nil || st.Seeder != c1.id {
		t.Fatalf("c1 claim = %+v, %v", st, err)
	}
	if err := c1.node.Announce(ctx, e, 3, true); err != nil {
		t.Fatal(err)
	}
	c1.setInventory(Holding{Digest: e, Size: 3, Complete: true})

	c1.node.pauseHeartbeats.Store(true)
	paused := time.Now()
	blobEverywhere(t, []*testNode{voter, c2}, e, 10*time.Second, wantHolders(nil))
	// The last heartbeat may have left up to an interval before the pause.
	if took := time.Since(paused); took < c1.cfg.ExpireAfter-c1.cfg.HeartbeatInterval {
		t.Errorf("expired %s after the pause, before ExpireAfter %s", took, c1.cfg.ExpireAfter)
	}
	st, err := c2.node.ClaimSeeder(ctx, d, 9)
	if err != nil || st.Seeder != c2.id {
		t.Fatalf("c2 claim after c1 expired = %+v, %v", st, err)
	}
	ms, err := voter.node.Members(ctx)
	if err != nil || len(ms) != 2 {
		t.Errorf("members after expiry = %+v, %v", ms, err)
	}
	// c1 learns it is no longer a member, and rejoins with its inventory
	// once it heartbeats again.
	if err := c1.node.Announce(ctx, digest("x"), 1, false); !errors.Is(err, p2p.ErrNotMember) {
		t.Errorf("Announce from an expired node = %v, want ErrNotMember", err)
	}
	c1.node.pauseHeartbeats.Store(false)
	blobEverywhere(t, nodes, e, 10*time.Second, wantHolders(map[p2p.NodeID]bool{c1.id: true}))
	if st, err := c2.node.Blob(ctx, d); err != nil || st.Seeder != c2.id {
		t.Errorf("c2's seeder role after c1 rejoined = %+v, %v", st, err)
	}
}

func TestPartitionedClientNoLeader(t *testing.T) {
	h := newHarness(t)
	nodes := formCluster(h, 2, func(c *Config) { c.Voters = 1; c.RequestTimeout = time.Second })
	voter, client := nodes[0], nodes[1]
	if client.node.Self().Voter {
		t.Fatal("second node is a voter")
	}
	// The voter stops answering peers: the client's view points at a
	// closed port.
	voter.srv.Close()
	var wg sync.WaitGroup
	for name, f := range map[string]func() error{
		"ClaimSeeder": func() error { _, err := client.node.ClaimSeeder(ctxT(t), dA, 1); return err },
		"Blob":        func() error { _, err := client.node.Blob(ctxT(t), dA); return err },
		"Announce":    func() error { return client.node.Announce(ctxT(t), dA, 1, false) },
	} {
		wg.Go(func() {
			start := time.Now()
			err := f()
			took := time.Since(start)
			if !errors.Is(err, p2p.ErrNoLeader) {
				t.Errorf("%s = %v, want ErrNoLeader", name, err)
			}
			if took > client.cfg.RequestTimeout+500*time.Millisecond {
				t.Errorf("%s took %s, RequestTimeout is %s", name, took, client.cfg.RequestTimeout)
			}
		})
	}
	wg.Wait()
	// A caller's shorter deadline wins too.
	ctx, cancel := context.WithTimeout(ctxT(t), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	if _, err := client.node.ClaimSeeder(ctx, dA, 1); !errors.Is(err, p2p.ErrNoLeader) || time.Since(start) > 700*time.Millisecond {
		t.Errorf("with a 200ms deadline: %v after %s", err, time.Since(start))
	}
}

// foreignTLS is a node of another CA that accepts any server: what an
// intruder would run.
func foreignTLS(t *testing.T, name string) *certs.TLS {
	t.Helper()
	ca := filepath.Join(t.TempDir(), "other-ca")
	if err := certs.InitCA(ca); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), name)
	if err := certs.Issue(ca, dir, name, []string{"127.0.0.1"}); err != nil {
		t.Fatal(err)
	}
	c, err := certs.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	c.Client = &tls.Config{MinVersion: tls.VersionTLS13, Certificates: c.Client.Certificates, InsecureSkipVerify: true}
	return c
}

func TestForeignCertificate(t *testing.T) {
	h := newHarness(t)
	a := formCluster(h, 1)[0]
	ctx := ctxT(t)
	if err := a.node.Announce(ctx, dA, 1, true); err != nil {
		t.Fatal(err)
	}
	// Short attempts, so that several fail within the test.
	fast := func(c *Config) { c.JoinTimeout = 300 * time.Millisecond; c.JoinBackoff = 100 * time.Millisecond }
	var malloryLog logBuffer
	mallory := h.start("mallory", join(a.cfg.PeerAddr), fast, func(c *Config) {
		c.TLS = foreignTLS(t, "mallory")
		c.Logger = malloryLog.logger()
	})
	eventually(t, 10*time.Second, func() error {
		if n := mallory.node.joinAttempts.Load(); n < 4 {
			return fmt.Errorf("%d join attempts", n)
		}
		return nil
	})
	if mallory.node.joined.Load() {
		t.Fatal("a node of another CA joined")
	}
	// Mallory's side sees an alert or a closed connection, depending on
	// timing; the server says why.
	if !malloryLog.contains("peer unreachable") {
		t.Errorf("mallory's join was answered:\n%s", malloryLog.String())
	}
	if !a.srvLog.contains("TLS handshake error") || !a.srvLog.contains("certificate") {
		t.Errorf("the peer server did not refuse mallory's certificate:\n%s", a.srvLog.String())
	}
	if _, err := mallory.node.Blob(ctx, dA); !errors.Is(err, p2p.ErrNoLeader) {
		t.Errorf("mallory's Blob = %v", err)
	}
	ms, err := a.node.Members(ctx)
	if err != nil || len(ms) != 1 {
		t.Errorf("members = %+v, %v", ms, err)
	}

	// Straight at the peer API and at the Raft port, the handshake fails.
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: mallory.cfg.TLS.Client}}
	defer hc.CloseIdleConnections()
	resp, err := hc.Get("https://" + a.cfg.PeerAddr + "/p2p/v1/cluster/blobs/" + dA.String())
	if err == nil {
		resp.Body.Close()
		t.Fatalf("mallory read blob state: %s", resp.Status)
	}
	c, err := tls.Dial("tcp", a.cfg.RaftAddr, mallory.cfg.TLS.Client)
	if err == nil {
		c.SetDeadline(time.Now().Add(5 * time.Second))
		// Under TLS 1.3 the server's refusal arrives with the first read.
		c.Write([]byte{0})
		_, err = c.Read(make([]byte, 1))
		c.Close()
	}
	if err == nil {
		t.Errorf("mallory's Raft connection: %v, want a refused certificate", err)
	}

	// A member of the CA does not trust a server of another CA either, and
	// says so at once: a refused certificate is not retried within a join
	// attempt (whose timeout is 10 s here), so attempts come at the
	// backoff's pace.
	var honestLog logBuffer
	honest := h.start("honest", join(mallory.cfg.PeerAddr), func(c *Config) {
		c.Logger = honestLog.logger()
		c.JoinBackoff = 100 * time.Millisecond
	})
	eventually(t, 10*time.Second, func() error {
		if n := honest.node.joinAttempts.Load(); n < 4 {
			return fmt.Errorf("%d join attempts", n)
		}
		return nil
	})
	if honest.node.joined.Load() {
		t.Error("joined through a server of another CA")
	}
	if !honestLog.contains("failed verification against the cluster CA") || !honestLog.contains("peer certificate refused") {
		t.Errorf("honest's join failed for another reason than mallory's certificate:\n%s", honestLog.String())
	}
}

func TestHandlerRequiresClientCertificate(t *testing.T) {
	h := newHarness(t)
	a := formCluster(h, 1)[0]
	// A server that does not ask for client certificates: the handler
	// itself refuses.
	srv := &http.Server{Handler: a.node.Handler(), TLSConfig: &tls.Config{Certificates: a.cfg.TLS.Server.Certificates}}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.ServeTLS(ln, "", "")
	defer srv.Close()
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	defer hc.CloseIdleConnections()
	resp, err := hc.Get("https://" + ln.Addr().String() + "/p2p/v1/cluster/members")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Errorf("status %s, want 403", resp.Status)
	}
}

// TestBootstrapExpect: five nodes that all join one name (a Kubernetes
// DaemonSet behind a headless Service), none told to bootstrap, form one
// cluster once the three expected are up: the smallest ID bootstraps and
// the others join it.
func TestBootstrapExpect(t *testing.T) {
	h := newHarness(t)
	ips := []string{"127.0.0.21", "127.0.0.22", "127.0.0.23", "127.0.0.24", "127.0.0.25"}
	ln, err := net.Listen("tcp", ips[0]+":0")
	if err != nil {
		t.Fatal(err)
	}
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	ln.Close()
	h.resolver.set("thaw.thaw-system.svc", ips...)
	at := func(ip string) nodeOpt {
		return func(c *Config) {
			c.PeerAddr = net.JoinHostPort(ip, port)
			c.RaftAddr = net.JoinHostPort(ip, "0")
			c.Join = []string{"thaw.thaw-system.svc:" + port}
			c.BootstrapExpect = 3
		}
	}
	var nodes []*testNode
	for i, ip := range ips {
		// IDs in reverse order of start: the bootstrapper is not simply
		// the first one up.
		nodes = append(nodes, h.start(fmt.Sprintf("pod%d", len(ips)-1-i), at(ip)))
	}
	for _, tn := range nodes {
		tn.waitJoined()
	}
	booted := 0
	for _, tn := range nodes {
		if tn.node.booted.Load() {
			booted++
			if tn.id != "pod0" {
				t.Errorf("%s bootstrapped, want the smallest ID, pod0", tn.id)
			}
		}
	}
	if booted != 1 {
		t.Errorf("%d nodes bootstrapped, want 1", booted)
	}
	voters, clients := roles(nodes)
	if len(voters) != 3 || len(clients) != 2 {
		t.Fatalf("%d voters and %d clients, want 3 and 2", len(voters), len(clients))
	}
	ms, err := nodes[0].node.Members(ctxT(t))
	if err != nil || len(ms) != 5 {
		t.Fatalf("Members = %d, %v", len(ms), err)
	}
}

// raftVoters is the Raft configuration's voters as tn (the leader) has it.
func raftVoters(t *testing.T, tn *testNode) map[p2p.NodeID]bool {
	t.Helper()
	f := tn.node.raft.Load().GetConfiguration()
	if err := f.Error(); err != nil {
		t.Fatal(err)
	}
	out := map[p2p.NodeID]bool{}
	for _, s := range f.Configuration().Servers {
		if s.Suffrage == raft.Voter {
			out[p2p.NodeID(s.ID)] = true
		}
	}
	return out
}

// TestRemoveDeadVoter: a voter gone for good is taken out of the Raft
// configuration and the members by an operator's Remove, once it has been
// silent past the expiry; its seat goes to the next node that joins able to
// vote. Removing a live node or the leader is refused, and nothing changes.
func TestRemoveDeadVoter(t *testing.T) {
	h := newHarness(t)
	nodes := formCluster(h, 4)
	ctx := ctxT(t)
	leader := leaderOf(t, nodes...)
	voters, clients := roles(nodes)
	if len(voters) != 3 || len(clients) != 1 {
		t.Fatalf("%d voters and %d clients, want 3 and 1", len(voters), len(clients))
	}
	var dead *testNode
	for _, v := range voters {
		if v != leader {
			dead = v
			break
		}
	}
	if err := clients[0].node.Remove(ctx, dead.id); err == nil || !strings.Contains(err.Error(), "alive") {
		t.Fatalf("removing a live voter: %v, want a refusal naming it alive", err)
	}
	if err := clients[0].node.Remove(ctx, leader.id); err == nil || !strings.Contains(err.Error(), "leads") {
		t.Fatalf("removing the leader: %v, want a refusal", err)
	}
	if got := raftVoters(t, leader); len(got) != 3 {
		t.Fatalf("after the refusals the Raft voters are %v", got)
	}

	dead.kill()
	// Refused while the leader may still hear from it, done once it expired.
	eventually(t, 15*time.Second, func() error { return clients[0].node.Remove(ctx, dead.id) })
	if got := raftVoters(t, leader); len(got) != 2 || got[dead.id] {
		t.Fatalf("Raft voters after removing %s: %v", dead.id, got)
	}
	ms, err := leader.node.Members(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range ms {
		if m.ID == dead.id {
			t.Fatalf("%s is still a member: %+v", dead.id, m)
		}
	}
	if err := clients[0].node.Remove(ctx, dead.id); !errors.Is(err, p2p.ErrNotMember) {
		t.Fatalf("removing %s again: %v, want ErrNotMember", dead.id, err)
	}

	// The free seat goes to a node that joins able to vote.
	fresh := h.start("n9", join(leader.cfg.PeerAddr))
	fresh.waitJoined()
	if !fresh.node.Self().Voter {
		t.Fatal("a node joining with a voter seat free did not become a voter")
	}
	if got := raftVoters(t, leaderOf(t, leader, voters[0], voters[1], voters[2], fresh)); len(got) != 3 || !got[fresh.id] {
		t.Fatalf("Raft voters after the new node joined: %v", got)
	}
	if err := clients[0].node.Announce(ctx, digest("after the removal"), 1, true); err != nil {
		t.Fatalf("a write after the removal: %v", err)
	}
}

// TestDropSoonLosesNothing: a node that removes many blobs while the
// leader is gone (killed, an election under way) has them all dropped from
// the cluster's holders once a leader is back; a blob announced again in
// between stays held.
func TestDropSoonLosesNothing(t *testing.T) {
	h := newHarness(t)
	nodes := formCluster(h, 4)
	ctx := ctxT(t)
	old := leaderOf(t, nodes...)
	_, clients := roles(nodes)
	c := clients[0]
	var ds []v1.Hash
	for i := range 30 {
		d := digest(fmt.Sprintf("evicted %d", i))
		if err := c.node.Announce(ctx, d, 10, true); err != nil {
			t.Fatal(err)
		}
		ds = append(ds, d)
	}
	old.kill()
	for _, d := range ds {
		c.node.DropSoon(d)
	}
	kept := ds[0]
	var rest []*testNode
	for _, tn := range nodes {
		if tn != old {
			rest = append(rest, tn)
		}
	}
	leader := leaderOf(t, rest...)
	if err := c.node.Announce(ctx, kept, 10, true); err != nil { // fetched again
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, func() error {
		for _, d := range ds[1:] {
			st, err := leader.node.Blob(ctx, d)
			if err != nil {
				return err
			}
			if holders(st)[c.id] {
				return fmt.Errorf("%s still holds %s", c.id, d)
			}
		}
		return nil
	})
	st, err := leader.node.Blob(ctx, kept)
	if err != nil || !holders(st)[c.id] {
		t.Fatalf("the blob announced again after its drop was asked: %+v, %v; want %s a holder", st, err, c.id)
	}
}
