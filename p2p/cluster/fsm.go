package cluster

import (
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/hashicorp/raft"

	"github.com/thaw-dev/thaw/p2p"
)

// Command operations, the "op" of a command in the Raft log. The log is
// JSON so that it can be read with a text tool when debugging a cluster.
const (
	opJoin     = "join"     // Member (+ Holdings): add or refresh a member, replace its holdings
	opLeave    = "leave"    // Node: the node leaves; its holdings and seeder roles go
	opExpire   = "expire"   // Node, JoinIndex: the leader has not heard from the node
	opAnnounce = "announce" // Node, Digest, Size, Complete
	opDrop     = "drop"     // Node, Digest
	opClaim    = "claim"    // Node, Digest, Size: claimSeeder
	opRemove   = "remove"   // Node: an operator removed a node gone for good; its record goes, voter or not
)

// command is one entry of the Raft log.
type command struct {
	Op       string        `json:"op"`
	Member   *memberRecord `json:"member,omitempty"`
	Holdings []Holding     `json:"holdings,omitempty"`
	Node     p2p.NodeID    `json:"node,omitempty"`
	// JoinIndex of an expire is the member's JoinIndex the leader judged:
	// the expire does nothing if the node has joined again since.
	JoinIndex uint64  `json:"joinIndex,omitempty"`
	Digest    v1.Hash `json:"digest,omitzero"`
	Size      int64   `json:"size,omitempty"`
	Complete  bool    `json:"complete,omitempty"`
	// Records (records.go): Put and Del of an opRecords, with the leader's
	// per-kind Limit; Now of an opExpireRecords.
	Put   []p2p.Record `json:"put,omitempty"`
	Del   []p2p.Record `json:"del,omitempty"`
	Limit int          `json:"limit,omitempty"`
	Now   time.Time    `json:"now,omitzero"`
}

// applyResult is what fsm.Apply returns to the leader's raft.ApplyFuture.
// Err is an outcome of the command (ErrNotMember), not a Raft failure.
type applyResult struct {
	State  p2p.BlobState
	Member memberRecord
	Err    error
}

// memberRecord is a member as replicated. Liveness is not replicated.
type memberRecord struct {
	ID       p2p.NodeID `json:"id"`
	PeerAddr string     `json:"peerAddr"`
	RaftAddr string     `json:"raftAddr,omitempty"`
	Voter    bool       `json:"voter,omitempty"`
	// Gone: a voter that left or was expired. It stays a member, as it stays
	// in the Raft configuration (and may lead again), but holds nothing
	// until it joins again. Clients that leave or expire are deleted.
	Gone bool `json:"gone,omitempty"`
	// JoinIndex is the log index of the member's latest join.
	JoinIndex uint64 `json:"joinIndex"`
}

func (m memberRecord) public() p2p.Member {
	return p2p.Member{ID: m.ID, PeerAddr: m.PeerAddr, RaftAddr: m.RaftAddr, Voter: m.Voter}
}

type blobRecord struct {
	size    int64
	seeder  p2p.NodeID
	holders map[p2p.NodeID]holding
}

// holding is one node's hold on a blob.
type holding struct {
	complete bool
	// since is the log index at which the node became a holder: it orders
	// the holders by arrival (see p2p.Holder.Since).
	since uint64
}

// state is the replicated state. Its methods are not safe for concurrent
// use; fsm guards it.
type state struct {
	members map[p2p.NodeID]*memberRecord
	blobs   map[v1.Hash]*blobRecord
	// byNode indexes blobs by the nodes holding or seeding them, so that a
	// node's join, leave or expiry does not scan every blob.
	byNode map[p2p.NodeID]map[v1.Hash]struct{}
	// records is the record store (p2p.RecordStore), by kind.
	records map[string]recordSet
}

func newState() *state {
	return &state{
		members: map[p2p.NodeID]*memberRecord{},
		blobs:   map[v1.Hash]*blobRecord{},
		byNode:  map[p2p.NodeID]map[v1.Hash]struct{}{},
		records: map[string]recordSet{},
	}
}

// apply runs c, committed at log index idx. It must be deterministic: every
// voter applies the same commands in the same order to the same state.
func (s *state) apply(idx uint64, c command) applyResult {
	switch c.Op {
	case opJoin:
		if c.Member == nil || c.Member.ID == "" {
			return applyResult{Err: fmt.Errorf("join without a member: %w", errBadRequest)}
		}
		m := *c.Member
		m.Gone, m.JoinIndex = false, idx
		s.forget(m.ID)
		s.members[m.ID] = &m
		for _, h := range c.Holdings {
			s.announce(idx, m.ID, h.Digest, h.Size, h.Complete)
		}
		return applyResult{Member: m}
	case opLeave, opExpire:
		m, ok := s.members[c.Node]
		if !ok || (c.Op == opExpire && m.JoinIndex != c.JoinIndex) {
			return applyResult{}
		}
		s.forget(c.Node)
		if m.Voter {
			m.Gone = true
		} else {
			delete(s.members, c.Node)
		}
		return applyResult{}
	case opRemove:
		if _, ok := s.members[c.Node]; ok {
			s.forget(c.Node)
			delete(s.members, c.Node)
		}
		return applyResult{}
	case opAnnounce, opClaim:
		if err := s.checkMember(c.Node); err != nil {
			return applyResult{Err: err}
		}
		if c.Op == opAnnounce {
			s.announce(idx, c.Node, c.Digest, c.Size, c.Complete)
		} else {
			s.claim(idx, c.Node, c.Digest, c.Size)
		}
		return applyResult{State: s.blob(c.Digest)}
	case opDrop:
		s.drop(c.Node, c.Digest)
		return applyResult{State: s.blob(c.Digest)}
	case opRecords:
		return applyResult{Err: s.applyRecords(c)}
	case opExpireRecords:
		s.expireRecords(c.Now)
		return applyResult{}
	default:
		return applyResult{Err: fmt.Errorf("unknown command %q: %w", c.Op, errBadRequest)}
	}
}

func (s *state) checkMember(id p2p.NodeID) error {
	if m, ok := s.members[id]; !ok || m.Gone {
		return fmt.Errorf("node %s: %w (it rejoins with its next heartbeat)", id, p2p.ErrNotMember)
	}
	return nil
}

func (s *state) record(d v1.Hash, size int64) *blobRecord {
	b, ok := s.blobs[d]
	if !ok {
		b = &blobRecord{holders: map[p2p.NodeID]holding{}}
		s.blobs[d] = b
	}
	if b.size == 0 && size > 0 {
		b.size = size
	}
	return b
}

func (s *state) index(node p2p.NodeID, d v1.Hash) {
	set, ok := s.byNode[node]
	if !ok {
		set = map[v1.Hash]struct{}{}
		s.byNode[node] = set
	}
	set[d] = struct{}{}
}

// unindex removes d from node's index unless node still holds or seeds it.
func (s *state) unindex(node p2p.NodeID, d v1.Hash) {
	if b, ok := s.blobs[d]; ok {
		if _, holds := b.holders[node]; holds || b.seeder == node {
			return
		}
	}
	delete(s.byNode[node], d)
	if len(s.byNode[node]) == 0 {
		delete(s.byNode, node)
	}
}

// gc deletes d once nobody holds or seeds it, keeping the state bounded.
func (s *state) gc(d v1.Hash) {
	if b, ok := s.blobs[d]; ok && len(b.holders) == 0 && b.seeder == "" {
		delete(s.blobs, d)
	}
}

func (s *state) announce(idx uint64, node p2p.NodeID, d v1.Hash, size int64, complete bool) {
	b := s.record(d, size)
	h, ok := b.holders[node]
	if !ok {
		h.since = idx
	}
	h.complete = complete
	b.holders[node] = h
	if complete {
		// A complete copy exists: nobody needs to fetch from the origin.
		b.seeder = ""
	}
	s.index(node, d)
}

func (s *state) claim(idx uint64, node p2p.NodeID, d v1.Hash, size int64) {
	b := s.record(d, size)
	if b.seeder != "" || b.hasComplete() {
		s.gc(d)
		return
	}
	// Expired, left and dropped seeders have been cleared, so an empty
	// seeder means there is no live one: the claimant wins.
	b.seeder = node
	// The seeder holds the blob in progress from now on (p2p.Coordinator):
	// the other claimants find it among the holders and wait for its pieces.
	if _, ok := b.holders[node]; !ok {
		b.holders[node] = holding{since: idx}
	}
	s.index(node, d)
}

func (s *state) drop(node p2p.NodeID, d v1.Hash) {
	b, ok := s.blobs[d]
	if !ok {
		return
	}
	delete(b.holders, node)
	if b.seeder == node {
		b.seeder = ""
	}
	s.unindex(node, d)
	s.gc(d)
}

// forget removes node from every blob's holders and seeder role.
func (s *state) forget(node p2p.NodeID) {
	for d := range s.byNode[node] {
		if b, ok := s.blobs[d]; ok {
			delete(b.holders, node)
			if b.seeder == node {
				b.seeder = ""
			}
			s.gc(d)
		}
	}
	delete(s.byNode, node)
}

// blob is the public state of d; holders are sorted by node ID.
func (s *state) blob(d v1.Hash) p2p.BlobState {
	st := p2p.BlobState{Digest: d}
	b, ok := s.blobs[d]
	if !ok {
		return st
	}
	st.Size, st.Seeder = b.size, b.seeder
	for node, hd := range b.holders {
		h := p2p.Holder{Node: node, Complete: hd.complete, Since: hd.since}
		if m, ok := s.members[node]; ok {
			h.PeerAddr = m.PeerAddr
		}
		st.Holders = append(st.Holders, h)
	}
	slices.SortFunc(st.Holders, func(a, b p2p.Holder) int { return strings.Compare(string(a.Node), string(b.Node)) })
	return st
}

func (b *blobRecord) hasComplete() bool {
	for _, h := range b.holders {
		if h.complete {
			return true
		}
	}
	return false
}

// snapshotData is the JSON form of a state, in a deterministic order.
type snapshotData struct {
	Members []memberRecord `json:"members"`
	Blobs   []snapshotBlob `json:"blobs"`
	Records []p2p.Record   `json:"records,omitempty"`
}

type snapshotBlob struct {
	Digest  v1.Hash          `json:"digest"`
	Size    int64            `json:"size,omitempty"`
	Seeder  p2p.NodeID       `json:"seeder,omitempty"`
	Holders []snapshotHolder `json:"holders,omitempty"`
}

type snapshotHolder struct {
	Node     p2p.NodeID `json:"node"`
	Complete bool       `json:"complete,omitempty"`
	// Since is absent (0) in snapshots of versions before it.
	Since uint64 `json:"since,omitempty"`
}

func (s *state) memberList() []memberRecord {
	out := make([]memberRecord, 0, len(s.members))
	for _, m := range s.members {
		out = append(out, *m)
	}
	slices.SortFunc(out, func(a, b memberRecord) int { return strings.Compare(string(a.ID), string(b.ID)) })
	return out
}

func (s *state) snapshot() snapshotData {
	out := snapshotData{Members: s.memberList(), Records: s.allRecords()}
	for d, b := range s.blobs {
		sb := snapshotBlob{Digest: d, Size: b.size, Seeder: b.seeder}
		for n, h := range b.holders {
			sb.Holders = append(sb.Holders, snapshotHolder{Node: n, Complete: h.complete, Since: h.since})
		}
		slices.SortFunc(sb.Holders, func(a, b snapshotHolder) int { return strings.Compare(string(a.Node), string(b.Node)) })
		out.Blobs = append(out.Blobs, sb)
	}
	slices.SortFunc(out.Blobs, func(a, b snapshotBlob) int { return strings.Compare(a.Digest.String(), b.Digest.String()) })
	return out
}

func stateFrom(data snapshotData) *state {
	s := newState()
	for _, m := range data.Members {
		s.members[m.ID] = &m
	}
	for _, sb := range data.Blobs {
		b := s.record(sb.Digest, sb.Size)
		b.seeder = sb.Seeder
		if sb.Seeder != "" {
			s.index(sb.Seeder, sb.Digest)
		}
		for _, h := range sb.Holders {
			b.holders[h.Node] = holding{complete: h.Complete, since: h.Since}
			s.index(h.Node, sb.Digest)
		}
		s.gc(sb.Digest)
	}
	for _, r := range data.Records {
		s.applyRecords(command{Put: []p2p.Record{r}})
	}
	return s
}

// fsm is the replicated state machine, after the contract of raft.FSM:
//
//   - Apply, Snapshot and Restore are called by Raft from its single FSM
//     goroutine, never concurrently with each other. Apply runs once per
//     committed command on every voter, in log order, and must be
//     deterministic; its result reaches only the leader's raft.ApplyFuture.
//   - Snapshot must be quick, since Apply waits for it: it copies the state
//     under the lock. The returned FSMSnapshot's Persist runs on another
//     goroutine, concurrently with later Applies, and only reads that copy.
//   - Restore replaces the whole state; it runs at start-up (the latest
//     snapshot) and when the leader sends a snapshot to a lagging voter.
//   - Reads (blob, member, members) come from any goroutine: HTTP handlers,
//     the heartbeat and expiry loops. They take the read lock and return
//     copies, so they may be slightly stale but never torn.
type fsm struct {
	mu sync.RWMutex
	st *state
}

var _ raft.FSM = (*fsm)(nil)

func newFSM() *fsm { return &fsm{st: newState()} }

// Apply implements raft.FSM. It returns an applyResult.
func (f *fsm) Apply(l *raft.Log) any {
	var c command
	if err := json.Unmarshal(l.Data, &c); err != nil {
		return applyResult{Err: fmt.Errorf("decode command at index %d: %v: %w", l.Index, err, errBadRequest)}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.st.apply(l.Index, c)
}

// Snapshot implements raft.FSM.
func (f *fsm) Snapshot() (raft.FSMSnapshot, error) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return fsmSnapshot{f.st.snapshot()}, nil
}

// Restore implements raft.FSM.
func (f *fsm) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	var data snapshotData
	if err := json.NewDecoder(rc).Decode(&data); err != nil {
		return fmt.Errorf("decode cluster snapshot: %w", err)
	}
	s := stateFrom(data)
	f.mu.Lock()
	f.st = s
	f.mu.Unlock()
	return nil
}

func (f *fsm) blob(d v1.Hash) p2p.BlobState {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.st.blob(d)
}

func (f *fsm) member(id p2p.NodeID) (memberRecord, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	m, ok := f.st.members[id]
	if !ok {
		return memberRecord{}, false
	}
	return *m, true
}

// members returns every member, sorted by ID.
func (f *fsm) members() []memberRecord {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.st.memberList()
}

func (f *fsm) voters() []memberRecord {
	ms := f.members()
	return slices.DeleteFunc(ms, func(m memberRecord) bool { return !m.Voter })
}

type fsmSnapshot struct{ data snapshotData }

// Persist implements raft.FSMSnapshot.
func (s fsmSnapshot) Persist(sink raft.SnapshotSink) error {
	if err := json.NewEncoder(sink).Encode(s.data); err != nil {
		sink.Cancel()
		return fmt.Errorf("write cluster snapshot: %w", err)
	}
	return sink.Close()
}

// Release implements raft.FSMSnapshot.
func (fsmSnapshot) Release() {}
