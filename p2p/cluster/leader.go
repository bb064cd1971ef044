package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sync"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/hashicorp/raft"

	"github.com/thaw-dev/thaw/p2p"
)

// serve answers a request this node can serve (see canServe).
func (n *Node) serve(ctx context.Context, rt route, arg string, body []byte) (any, error) {
	switch rt {
	case routeJoin:
		var req joinRequest
		if err := decode(body, &req); err != nil {
			return nil, err
		}
		return n.leaderJoin(ctx, req)
	case routeLeave, routeHeartbeat:
		var req nodeRequest
		if err := decode(body, &req); err != nil {
			return nil, err
		}
		if req.Node == "" {
			return nil, fmt.Errorf("%w: no node", errBadRequest)
		}
		if rt == routeHeartbeat {
			return n.leaderHeartbeat(req.Node)
		}
		_, err := n.applyLocal(ctx, command{Op: opLeave, Node: req.Node})
		n.live.forget(req.Node)
		return struct{}{}, err
	case routeRemove:
		var req nodeRequest
		if err := decode(body, &req); err != nil {
			return nil, err
		}
		return struct{}{}, n.leaderRemove(ctx, req.Node)
	case routeClaim, routeAnnounce, routeDrop:
		var req blobRequest
		if err := decode(body, &req); err != nil {
			return nil, err
		}
		if req.Node == "" || req.Digest == (v1.Hash{}) || req.Size < 0 {
			return nil, fmt.Errorf("%w: want node, digest and a size >= 0", errBadRequest)
		}
		op := opAnnounce
		switch rt {
		case routeClaim:
			op = opClaim
		case routeDrop:
			op = opDrop
		}
		res, err := n.applyLocal(ctx, command{Op: op, Node: req.Node, Digest: req.Digest, Size: req.Size, Complete: req.Complete})
		return res.State, err
	case routeBlob:
		d, err := v1.NewHash(arg)
		if err != nil {
			return nil, fmt.Errorf("%w: %v", errBadRequest, err)
		}
		return n.fsm.blob(d), nil
	case routeMembers:
		return n.leaderMembers(), nil
	case routeRecordsPut, routeRecordsGet:
		return n.serveRecords(ctx, rt, body)
	case routeHello:
		return n.hello(), nil
	}
	return nil, fmt.Errorf("%w: unknown route %s", errBadRequest, rt.name)
}

// applyLocal commits c through this node's Raft, which must lead. Raft
// failures (not the leader, leadership lost, shut down, timed out) wrap
// p2p.ErrNoLeader; the command's own outcome comes back as the error of
// the result.
func (n *Node) applyLocal(ctx context.Context, c command) (applyResult, error) {
	r := n.raft.Load()
	if r == nil {
		return applyResult{}, fmt.Errorf("%w: this node does not run Raft", p2p.ErrNoLeader)
	}
	data, err := json.Marshal(c)
	if err != nil {
		return applyResult{}, err
	}
	start := time.Now()
	f := r.Apply(data, remaining(ctx, n.cfg.RequestTimeout))
	if err := waitFuture(ctx, f); err != nil {
		return applyResult{}, fmt.Errorf("%w: commit %s: %v", p2p.ErrNoLeader, c.Op, err)
	}
	n.metrics.commitDuration.Observe(time.Since(start).Seconds())
	res, ok := f.Response().(applyResult)
	if !ok {
		return applyResult{}, fmt.Errorf("commit %s: unexpected FSM response %T", c.Op, f.Response())
	}
	return res, res.Err
}

// leaderJoin admits a node: as a voter while the Raft configuration has
// fewer than Config.Voters voters and the node runs Raft, else as a client.
// Joining again is how a node refreshes its addresses and inventory.
func (n *Node) leaderJoin(ctx context.Context, req joinRequest) (joinResponse, error) {
	m := req.Member
	if m.ID == "" || (m.PeerAddr == "" && !n.cfg.standalone()) {
		return joinResponse{}, fmt.Errorf("%w: a join needs the node's ID and peer address", errBadRequest)
	}
	// One join at a time, so that two cannot both take the last voter
	// seat; waiting for the seat is bounded by ctx like the rest.
	select {
	case n.joinSem <- struct{}{}:
		defer func() { <-n.joinSem }()
	case <-ctx.Done():
		return joinResponse{}, fmt.Errorf("%w: waiting for another join: %v", p2p.ErrNoLeader, ctx.Err())
	}
	r := n.raft.Load()
	if r == nil {
		return joinResponse{}, fmt.Errorf("%w: this node does not run Raft", p2p.ErrNoLeader)
	}
	cf := r.GetConfiguration()
	if err := waitFuture(ctx, cf); err != nil {
		return joinResponse{}, fmt.Errorf("%w: read the Raft configuration: %v", p2p.ErrNoLeader, err)
	}
	var existing *raft.Server
	voters := 0
	for _, s := range cf.Configuration().Servers {
		if s.Suffrage == raft.Voter {
			voters++
		}
		if s.ID == raft.ServerID(m.ID) {
			existing = &s
		}
	}
	rec := memberRecord{ID: m.ID, PeerAddr: m.PeerAddr}
	switch {
	case existing != nil && existing.Suffrage == raft.Voter:
		// A voter restarting, or rejoining after it was expired.
		rec.Voter, rec.RaftAddr = true, string(existing.Address)
		if req.CanVote && m.RaftAddr != "" && raft.ServerAddress(m.RaftAddr) != existing.Address {
			n.log.Info("a voter moved; updating its Raft address", "node", m.ID, "from", existing.Address, "to", m.RaftAddr)
			if err := n.addVoter(ctx, r, m); err != nil {
				return joinResponse{}, err
			}
			rec.RaftAddr = m.RaftAddr
		}
	case req.CanVote && voters < n.cfg.Voters && !n.cfg.standalone():
		if err := n.addVoter(ctx, r, m); err != nil {
			return joinResponse{}, err
		}
		rec.Voter, rec.RaftAddr = true, m.RaftAddr
	}
	res, err := n.applyLocal(ctx, command{Op: opJoin, Member: &rec, Holdings: req.Holdings})
	if err != nil {
		return joinResponse{}, err
	}
	n.live.mark(m.ID, time.Now())
	n.log.Info("node joined", "node", m.ID, "voter", rec.Voter, "peerAddr", m.PeerAddr, "holdings", len(req.Holdings))
	return joinResponse{Member: res.Member, View: n.localView()}, nil
}

// addVoter adds (or moves) m as a Raft voter. It first dials m's Raft
// address: a voter the leader cannot reach would count towards the quorum
// without ever voting, and with two voters stall every write.
func (n *Node) addVoter(ctx context.Context, r *raft.Raft, m memberRecord) error {
	if m.RaftAddr == "" {
		return fmt.Errorf("%w: node %s has no Raft address", errJoinRefused, m.ID)
	}
	c, err := n.stream.Dial(raft.ServerAddress(m.RaftAddr), remaining(ctx, n.cfg.RequestTimeout))
	if err != nil {
		return fmt.Errorf("%w: the leader cannot reach node %s's Raft address %s: %v", errJoinRefused, m.ID, m.RaftAddr, err)
	}
	c.Close()
	f := r.AddVoter(raft.ServerID(m.ID), raft.ServerAddress(m.RaftAddr), 0, remaining(ctx, n.cfg.JoinTimeout))
	if err := waitFuture(ctx, f); err != nil {
		return fmt.Errorf("%w: add node %s as a voter: %v", p2p.ErrNoLeader, m.ID, err)
	}
	n.log.Info("added a Raft voter", "node", m.ID, "raftAddr", m.RaftAddr)
	return nil
}

// leaderRemove takes a node gone for good out of the cluster: out of the
// Raft configuration if it is a voter (so that it no longer counts towards
// the quorum, and its seat is free for the next node that joins able to
// vote), and out of the members with its holdings. It refuses the leader
// itself and a node heard from within ExpireAfter: removing a live node
// would only have it join again, and removing the wrong voter of a cluster
// that is one failure from losing its quorum would lose it.
func (n *Node) leaderRemove(ctx context.Context, id p2p.NodeID) error {
	if id == "" {
		return fmt.Errorf("%w: no node", errBadRequest)
	}
	if id == n.cfg.NodeID {
		return fmt.Errorf("%w: node %s leads the cluster; stop it (another voter takes over), then remove it", errBadRequest, id)
	}
	m, member := n.fsm.member(id)
	if member && !m.Gone {
		seen, ok := n.live.lastSeen(id)
		if !ok {
			return fmt.Errorf("%w: node %s may be alive (this leader has not watched it for %s yet); retry later", errBadRequest, id, n.cfg.ExpireAfter)
		}
		if time.Since(seen) <= n.cfg.ExpireAfter {
			return fmt.Errorf("%w: node %s is alive (heard from %s ago); stop it first", errBadRequest, id, time.Since(seen).Round(time.Millisecond))
		}
	}
	r := n.raft.Load()
	if r == nil {
		return fmt.Errorf("%w: this node does not run Raft", p2p.ErrNoLeader)
	}
	cf := r.GetConfiguration()
	if err := waitFuture(ctx, cf); err != nil {
		return fmt.Errorf("%w: read the Raft configuration: %v", p2p.ErrNoLeader, err)
	}
	inRaft := slices.ContainsFunc(cf.Configuration().Servers, func(s raft.Server) bool { return s.ID == raft.ServerID(id) })
	if !member && !inRaft {
		return fmt.Errorf("%w: node %s is not a member", p2p.ErrNotMember, id)
	}
	if inRaft {
		if err := waitFuture(ctx, r.RemoveServer(raft.ServerID(id), 0, remaining(ctx, n.cfg.RequestTimeout))); err != nil {
			return fmt.Errorf("%w: remove node %s from the Raft configuration: %v", p2p.ErrNoLeader, id, err)
		}
		n.log.Info("removed a Raft voter", "node", id)
	}
	if _, err := n.applyLocal(ctx, command{Op: opRemove, Node: id}); err != nil {
		return err
	}
	n.live.forget(id)
	n.log.Info("removed a node", "node", id, "voter", inRaft)
	return nil
}

func (n *Node) leaderHeartbeat(id p2p.NodeID) (heartbeatResponse, error) {
	m, ok := n.fsm.member(id)
	known := ok && !m.Gone
	if known {
		n.live.mark(id, time.Now())
	} else if r := n.raft.Load(); r == nil || n.live.leading() != r.CurrentTerm() {
		// A new leader may not have applied the whole log yet: saying
		// "unknown" now could send a member rejoining for nothing.
		return heartbeatResponse{}, fmt.Errorf("%w: the new leader is catching up", p2p.ErrNoLeader)
	}
	return heartbeatResponse{Known: known, View: n.localView()}, nil
}

// localView is the view this node, a voter, sends to clients: the leader
// first, voters that left or expired last.
func (n *Node) localView() view {
	var v view
	if r := n.raft.Load(); r != nil {
		_, id := r.LeaderWithID()
		v.Leader = p2p.NodeID(id)
	}
	voters := n.fsm.voters()
	slices.SortStableFunc(voters, func(a, b memberRecord) int {
		rank := func(m memberRecord) int {
			switch {
			case m.ID == v.Leader:
				return 0
			case m.Gone:
				return 2
			}
			return 1
		}
		return rank(a) - rank(b)
	})
	for _, m := range voters {
		v.Voters = append(v.Voters, m.public())
	}
	return v
}

// leaderMembers reports the members with liveness as this node, the
// leader, knows it.
func (n *Node) leaderMembers() []p2p.Member {
	now := time.Now()
	var out []p2p.Member
	for _, m := range n.fsm.members() {
		pm := m.public()
		switch t, ok := n.live.lastSeen(m.ID); {
		case m.ID == n.cfg.NodeID:
			pm.Alive, pm.LastSeen = !m.Gone, now
		case ok:
			pm.Alive, pm.LastSeen = !m.Gone && now.Sub(t) <= n.cfg.ExpireAfter, t
		default:
			pm.Alive = !m.Gone // not heard from since this node became leader
		}
		out = append(out, pm)
	}
	return out
}

// leaderDuties runs while this node runs Raft: whenever it leads, it
// expires members it has not heard from for ExpireAfter.
func (n *Node) leaderDuties(ctx context.Context, r *raft.Raft) {
	t := time.NewTicker(min(n.cfg.HeartbeatInterval, n.cfg.ExpireAfter/4))
	defer t.Stop()
	defer n.live.end()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if r.State() != raft.Leader {
			n.live.end()
			continue
		}
		if term := r.CurrentTerm(); n.live.leading() != term {
			// A new leader has heard from nobody yet: everyone starts
			// fresh rather than being expired for a silence it did not
			// witness. The barrier makes the members it reads current.
			bctx, cancel := context.WithTimeout(ctx, n.cfg.RequestTimeout)
			err := waitFuture(bctx, r.Barrier(n.cfg.RequestTimeout))
			cancel()
			if err != nil {
				continue
			}
			var ids []p2p.NodeID
			for _, m := range n.fsm.members() {
				ids = append(ids, m.ID)
			}
			n.live.begin(term, ids, time.Now())
			continue
		}
		n.expireSilent(ctx)
		n.expireRecords(ctx, time.Now())
	}
}

func (n *Node) expireSilent(ctx context.Context) {
	now := time.Now()
	members := n.fsm.members()
	ids := make(map[p2p.NodeID]bool, len(members))
	for _, m := range members {
		ids[m.ID] = true
		if m.Gone || m.ID == n.cfg.NodeID {
			continue
		}
		seen, ok := n.live.lastSeen(m.ID)
		if !ok {
			n.live.mark(m.ID, now) // joined through another leader
			continue
		}
		if now.Sub(seen) <= n.cfg.ExpireAfter {
			continue
		}
		actx, cancel := context.WithTimeout(ctx, n.cfg.RequestTimeout)
		_, err := n.applyLocal(actx, command{Op: opExpire, Node: m.ID, JoinIndex: m.JoinIndex})
		cancel()
		if err != nil {
			n.log.Warn("expiring a silent node failed", "node", m.ID, "err", err)
			continue
		}
		n.live.forget(m.ID)
		n.log.Info("expired a silent node: its holdings and seeder roles are dropped", "node", m.ID, "silentFor", now.Sub(seen).Round(time.Millisecond))
	}
	n.live.prune(ids)
}

// liveness is the leader's in-memory record of heartbeats. It is not
// replicated: a new leader starts it afresh (see leaderDuties).
type liveness struct {
	mu   sync.Mutex
	term uint64 // the Raft term this node leads in; 0 when not leading
	seen map[p2p.NodeID]time.Time
}

func newLiveness() *liveness { return &liveness{seen: map[p2p.NodeID]time.Time{}} }

func (l *liveness) begin(term uint64, ids []p2p.NodeID, now time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.term = term
	clear(l.seen)
	for _, id := range ids {
		l.seen[id] = now
	}
}

func (l *liveness) end() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.term = 0
	clear(l.seen)
}

func (l *liveness) leading() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.term
}

// mark records a heartbeat; outside a leadership it is dropped.
func (l *liveness) mark(id p2p.NodeID, now time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.term != 0 {
		l.seen[id] = now
	}
}

func (l *liveness) lastSeen(id p2p.NodeID) (time.Time, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	t, ok := l.seen[id]
	return t, ok
}

func (l *liveness) forget(id p2p.NodeID) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.seen, id)
}

// prune drops entries of nodes that are no longer members.
func (l *liveness) prune(members map[p2p.NodeID]bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for id := range l.seen {
		if !members[id] {
			delete(l.seen, id)
		}
	}
}
