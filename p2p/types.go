package p2p

import (
	"context"
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
