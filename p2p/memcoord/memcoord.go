// Package memcoord is an in-memory p2p.Coordinator: one cluster state shared
// by the nodes of one process. It is the reference the Raft coordinator
// (p2p/cluster) is checked against, and what the data plane's tests and
// single-process simulations run on. It has no liveness: a node is a holder
// until it drops the blob or is removed with Remove.
package memcoord

import (
	"context"
	"fmt"
	"slices"
	"sync"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/thaw-dev/thaw/p2p"
)

// Cluster is the shared state.
type Cluster struct {
	mu      sync.Mutex
	members map[p2p.NodeID]p2p.Member
	blobs   map[v1.Hash]*blob
	// Fail, if set, is returned by every call of the nodes it names: a
	// partition.
	fail map[p2p.NodeID]error
	// seq numbers the claims and announcements (p2p.Holder.Since).
	seq uint64
}

type blob struct {
	size    int64
	seeder  p2p.NodeID
	holders map[p2p.NodeID]p2p.Holder // Node, Complete and Since set
}

// New returns an empty cluster.
func New() *Cluster {
	return &Cluster{members: map[p2p.NodeID]p2p.Member{}, blobs: map[v1.Hash]*blob{}, fail: map[p2p.NodeID]error{}}
}

// Join adds a member and returns its Coordinator.
func (c *Cluster) Join(m p2p.Member) *Node {
	c.mu.Lock()
	defer c.mu.Unlock()
	m.Alive = true
	c.members[m.ID] = m
	return &Node{c: c, self: m}
}

// Remove takes a member out, as the leader does when it expires a dead node:
// it is dropped from every blob's holders and seeder roles.
func (c *Cluster) Remove(id p2p.NodeID) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.members, id)
	for d, b := range c.blobs {
		delete(b.holders, id)
		if b.seeder == id {
			b.seeder = ""
		}
		c.gcLocked(d, b)
	}
}

// Partition makes every call of node id fail with an error wrapping
// p2p.ErrNoLeader (nil err heals it).
func (c *Cluster) Partition(id p2p.NodeID, partitioned bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if partitioned {
		c.fail[id] = fmt.Errorf("node %s is partitioned: %w", id, p2p.ErrNoLeader)
	} else {
		delete(c.fail, id)
	}
}

func (c *Cluster) gcLocked(d v1.Hash, b *blob) {
	if len(b.holders) == 0 && b.seeder == "" {
		delete(c.blobs, d)
	}
}

func (c *Cluster) stateLocked(d v1.Hash) p2p.BlobState {
	st := p2p.BlobState{Digest: d, Holders: []p2p.Holder{}}
	b := c.blobs[d]
	if b == nil {
		return st
	}
	st.Size, st.Seeder = b.size, b.seeder
	for id, h := range b.holders {
		h.PeerAddr = c.members[id].PeerAddr
		st.Holders = append(st.Holders, h)
	}
	slices.SortFunc(st.Holders, func(a, b p2p.Holder) int {
		if a.Node < b.Node {
			return -1
		}
		if a.Node > b.Node {
			return 1
		}
		return 0
	})
	return st
}

// Node is one member's view.
type Node struct {
	c    *Cluster
	self p2p.Member
}

var _ p2p.Coordinator = (*Node)(nil)

// Self implements p2p.Coordinator.
func (n *Node) Self() p2p.Member { return n.self }

func (n *Node) check(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return n.c.fail[n.self.ID]
}

// Blob implements p2p.Coordinator.
func (n *Node) Blob(ctx context.Context, dgst v1.Hash) (p2p.BlobState, error) {
	n.c.mu.Lock()
	defer n.c.mu.Unlock()
	if err := n.check(ctx); err != nil {
		return p2p.BlobState{}, err
	}
	return n.c.stateLocked(dgst), nil
}

// ClaimSeeder implements p2p.Coordinator.
func (n *Node) ClaimSeeder(ctx context.Context, dgst v1.Hash, size int64) (p2p.BlobState, error) {
	n.c.mu.Lock()
	defer n.c.mu.Unlock()
	if err := n.check(ctx); err != nil {
		return p2p.BlobState{}, err
	}
	b := n.c.blobs[dgst]
	if b == nil {
		b = &blob{holders: map[p2p.NodeID]p2p.Holder{}}
		n.c.blobs[dgst] = b
	}
	if b.size == 0 {
		b.size = size
	}
	hasComplete := false
	for _, h := range b.holders {
		hasComplete = hasComplete || h.Complete
	}
	if _, alive := n.c.members[b.seeder]; !alive {
		b.seeder = ""
	}
	if b.seeder == "" && !hasComplete {
		// The seeder holds the blob in progress from the moment it is named,
		// so the other claimants find it and wait for its pieces.
		b.seeder = n.self.ID
		if _, ok := b.holders[n.self.ID]; !ok {
			n.c.seq++
			b.holders[n.self.ID] = p2p.Holder{Node: n.self.ID, Since: n.c.seq}
		}
	}
	return n.c.stateLocked(dgst), nil
}

// Announce implements p2p.Coordinator.
func (n *Node) Announce(ctx context.Context, dgst v1.Hash, size int64, complete bool) error {
	n.c.mu.Lock()
	defer n.c.mu.Unlock()
	if err := n.check(ctx); err != nil {
		return err
	}
	b := n.c.blobs[dgst]
	if b == nil {
		b = &blob{holders: map[p2p.NodeID]p2p.Holder{}}
		n.c.blobs[dgst] = b
	}
	if size > 0 {
		b.size = size
	}
	h, ok := b.holders[n.self.ID]
	if !ok {
		n.c.seq++
		h = p2p.Holder{Node: n.self.ID, Since: n.c.seq}
	}
	h.Complete = complete
	b.holders[n.self.ID] = h
	if complete && b.seeder == n.self.ID {
		b.seeder = "" // done seeding: complete holders serve it now
	}
	return nil
}

// Drop implements p2p.Coordinator.
func (n *Node) Drop(ctx context.Context, dgst v1.Hash) error {
	n.c.mu.Lock()
	defer n.c.mu.Unlock()
	if err := n.check(ctx); err != nil {
		return err
	}
	if b := n.c.blobs[dgst]; b != nil {
		delete(b.holders, n.self.ID)
		if b.seeder == n.self.ID {
			b.seeder = ""
		}
		n.c.gcLocked(dgst, b)
	}
	return nil
}
