package p2p

import (
	"context"
	"encoding/json"
	"errors"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// Errors of the peer network; callers test them with errors.Is.
var (
	// ErrNoLeader: no leader could be reached within the time allowed (a
	// partition, or an election in progress). Callers fall back to the origin.
	ErrNoLeader = errors.New("no cluster leader reachable")
	// ErrNotMember: the node asked about is not a member of the cluster.
	ErrNotMember = errors.New("not a cluster member")
)

// NodeID names a node; stable across restarts.
type NodeID string

// Member is one node of the cluster.
type Member struct {
	ID NodeID `json:"id"`
	// PeerAddr is host:port of the node's peer API (mutual TLS): coordination
	// requests, piece bitmaps and pieces.
	PeerAddr string `json:"peerAddr"`
	// RaftAddr is host:port of the node's Raft transport.
	RaftAddr string `json:"raftAddr"`
	// Voter: the node is a Raft voter; otherwise a client of the voters.
	Voter bool `json:"voter"`
	// Alive and LastSeen come from heartbeats the leader keeps in memory;
	// they are not replicated and are zero when read from a follower.
	Alive    bool      `json:"alive"`
	LastSeen time.Time `json:"lastSeen,omitzero"`
}

// Holder is a node that holds (part of) a blob.
type Holder struct {
	Node     NodeID `json:"node"`
	PeerAddr string `json:"peerAddr"`
	Complete bool   `json:"complete"`
	// Since orders the holders of a blob by arrival: the coordinator's
	// sequence number (the Raft log index) of the node's first claim or
	// announcement of the blob; 0 when unknown. Holders that arrive in a
	// burst stream the blob from each other in this order.
	Since uint64 `json:"since,omitempty"`
}

// BlobState is what the cluster knows of one blob.
type BlobState struct {
	Digest v1.Hash `json:"digest"`
	Size   int64   `json:"size"`
	// Seeder is the node the leader named to fetch the blob from the origin,
	// empty when none is (or no longer needs to be) named.
	Seeder NodeID `json:"seeder,omitempty"`
	// Holders are the live members holding the blob, complete or in progress.
	Holders []Holder `json:"holders"`
}

// Coordinator is the cluster as the data plane needs it. Every method is safe
// for concurrent use and returns within a bounded time (ErrNoLeader when the
// leader cannot be reached), so a partitioned node falls back to the origin.
type Coordinator interface {
	// Self is this node.
	Self() Member
	// Blob returns the cluster's state of dgst (no holders: a zero state with
	// the digest set, not an error). It may be served by any voter and be
	// slightly stale.
	Blob(ctx context.Context, dgst v1.Hash) (BlobState, error)
	// ClaimSeeder asks the leader to name a seeder for dgst. The leader names
	// the first claimant when the blob has no live seeder and no live complete
	// holder, and otherwise keeps the current one. A node named seeder is a
	// holder (in progress) from then on, so the other claimants find it among
	// the holders and wait for its pieces. The answer is the state after the
	// claim: Seeder == Self().ID when this node was named. When the seeder
	// announces the blob complete it is no longer the seeder.
	ClaimSeeder(ctx context.Context, dgst v1.Hash, size int64) (BlobState, error)
	// Announce records that this node holds dgst, complete or in progress.
	Announce(ctx context.Context, dgst v1.Hash, size int64, complete bool) error
	// Drop records that this node no longer holds dgst (evicted, failed).
	Drop(ctx context.Context, dgst v1.Hash) error
}

// ErrStateFull: the replicated state holds as many records of a kind as it
// allows (see RecordStore); the put is refused whole.
var ErrStateFull = errors.New("replicated state full")

// Record is a small value that a layer above the cluster (the predictor)
// keeps in the replicated state, so that it survives a leader change.
// Records are namespaced by Kind and keyed by Key within it; they are
// removed by their writer or, at the latest, by the leader once Expires has
// passed.
type Record struct {
	Kind string `json:"kind"`
	Key  string `json:"key"`
	// Node is the node the record concerns, empty for the whole cluster;
	// readers filter on it.
	Node NodeID `json:"node,omitempty"`
	// Expires is when the leader deletes the record; required.
	Expires time.Time `json:"expires"`
	// Value is the record's JSON value, opaque to the cluster.
	Value json.RawMessage `json:"value"`
}

// RecordStore is the cluster's replicated key-value store of small records.
// Every method is safe for concurrent use and bounded in time like the
// Coordinator's (ErrNoLeader when the leader cannot be reached). The store
// is bounded: a kind holds at most a configured number of records and a
// value a configured size; a put over either limit fails whole with
// ErrStateFull (count) or a bad-request error (size, empty kind or key,
// zero Expires), and changes nothing.
type RecordStore interface {
	// PutRecords creates or replaces records, and deletes the records named
	// in del (kind and key; Node, Expires and Value are ignored), in one
	// atomic commit; a record both put and deleted is put. Keys absent on
	// delete are ignored.
	PutRecords(ctx context.Context, put []Record, del []Record) error
	// Records lists the records of kind concerning node (every record of
	// the kind when node is empty), sorted by key. It may be served by any
	// voter and be slightly stale; expired records may still be listed
	// until the leader deletes them.
	Records(ctx context.Context, kind string, node NodeID) ([]Record, error)
	// Leading reports whether this node is the leader now: the one place
	// where cluster-wide duties (the predictor's planning) run.
	Leading() bool
}
