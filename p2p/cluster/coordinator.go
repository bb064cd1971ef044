package cluster

import (
	"context"
	"errors"
	"fmt"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/thaw-dev/thaw/p2p"
)

var _ p2p.Coordinator = (*Node)(nil)

// Self implements p2p.Coordinator. Voter (and with it RaftAddr, empty for
// a client) is known once the node has joined; Alive and LastSeen are the
// leader's to say (see Members).
func (n *Node) Self() p2p.Member {
	m := p2p.Member{ID: n.cfg.NodeID, PeerAddr: n.cfg.PeerAddr, Voter: n.voter.Load()}
	if m.Voter {
		m.RaftAddr = n.raftAddr
	}
	return m
}

// Blob implements p2p.Coordinator: a voter reads its own replica, a client
// asks a voter.
func (n *Node) Blob(ctx context.Context, dgst v1.Hash) (p2p.BlobState, error) {
	var st p2p.BlobState
	if err := n.ready(dgst); err != nil {
		return st, err
	}
	err := n.call(ctx, routeBlob, dgst.String(), nil, &st, n.cfg.RequestTimeout)
	return st, err
}

// ClaimSeeder implements p2p.Coordinator.
func (n *Node) ClaimSeeder(ctx context.Context, dgst v1.Hash, size int64) (p2p.BlobState, error) {
	return n.write(ctx, routeClaim, blobRequest{Node: n.cfg.NodeID, Digest: dgst, Size: size})
}

// Announce implements p2p.Coordinator.
func (n *Node) Announce(ctx context.Context, dgst v1.Hash, size int64, complete bool) error {
	n.drops.cancel(dgst)
	_, err := n.write(ctx, routeAnnounce, blobRequest{Node: n.cfg.NodeID, Digest: dgst, Size: size, Complete: complete})
	return err
}

// Drop implements p2p.Coordinator.
func (n *Node) Drop(ctx context.Context, dgst v1.Hash) error {
	_, err := n.write(ctx, routeDrop, blobRequest{Node: n.cfg.NodeID, Digest: dgst})
	return err
}

func (n *Node) write(ctx context.Context, rt route, req blobRequest) (p2p.BlobState, error) {
	var st p2p.BlobState
	if err := n.ready(req.Digest); err != nil {
		return st, err
	}
	if req.Size < 0 {
		return st, fmt.Errorf("cluster %s %s: negative size %d", rt.name, req.Digest, req.Size)
	}
	err := n.call(ctx, rt, "", req, &st, n.cfg.RequestTimeout)
	if errors.Is(err, p2p.ErrNotMember) {
		// The leader expired this node and it has not noticed yet: rejoin
		// now, with the inventory, rather than at the next heartbeat.
		n.checkMembership()
	}
	return st, err
}

func (n *Node) ready(dgst v1.Hash) error {
	if dgst.Algorithm == "" || dgst.Hex == "" {
		return fmt.Errorf("cluster: empty digest")
	}
	if !n.joined.Load() {
		return fmt.Errorf("cluster: %w: this node is not joined to the cluster (yet)", p2p.ErrNoLeader)
	}
	return nil
}

// Members lists the cluster's members with liveness as the leader knows it
// (asking the leader, wherever this node is), sorted by ID. Voters that left
// or expired stay listed, not Alive, as they stay Raft voters.
func (n *Node) Members(ctx context.Context) ([]p2p.Member, error) {
	var ms []p2p.Member
	err := n.call(ctx, routeMembers, "", nil, &ms, n.cfg.RequestTimeout)
	return ms, err
}

// Remove takes a node that is gone for good out of the cluster (see
// leaderRemove): out of the Raft configuration if it votes, and out of the
// members with everything it held. The node must have been silent for
// longer than ExpireAfter, and must not lead.
func (n *Node) Remove(ctx context.Context, id p2p.NodeID) error {
	return n.call(ctx, routeRemove, "", nodeRequest{Node: id}, nil, n.cfg.RequestTimeout)
}

// Leader returns the current leader's ID and peer address as this node
// knows them; empty when it knows none.
func (n *Node) Leader() (p2p.NodeID, string) {
	if r := n.raft.Load(); r != nil {
		_, id := r.LeaderWithID()
		if id == "" {
			return "", ""
		}
		m, _ := n.fsm.member(p2p.NodeID(id))
		return p2p.NodeID(id), m.PeerAddr
	}
	v := n.view.Load()
	if v == nil {
		return "", ""
	}
	for _, m := range v.Voters {
		if m.ID == v.Leader {
			return m.ID, m.PeerAddr
		}
	}
	return v.Leader, ""
}
