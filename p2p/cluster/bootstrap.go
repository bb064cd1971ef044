package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"

	"github.com/hashicorp/raft"

	"github.com/thaw-dev/thaw/p2p"
)

// routeHello answers who a node is and whether it knows a cluster. Every
// node serves it itself (atAny), joined or not: it is how nodes that all
// --join one address (a Kubernetes headless Service) agree which of them
// bootstraps (Config.BootstrapExpect).
var routeHello = route{"hello", http.MethodGet, "/p2p/v1/cluster/hello", atAny}

// helloResponse is routeHello's answer.
type helloResponse struct {
	ID p2p.NodeID `json:"id"`
	// Clustered: the node has Raft state, has joined, or knows a leader:
	// there is a cluster to join, so nobody bootstraps.
	Clustered bool `json:"clustered"`
}

func (n *Node) hello() helloResponse {
	clustered := n.hasState || n.booted.Load() || n.joined.Load()
	if r := n.raft.Load(); r != nil {
		if addr, _ := r.LeaderWithID(); addr != "" {
			clustered = true
		}
	}
	return helloResponse{ID: n.cfg.NodeID, Clustered: clustered}
}

// maybeBootstrap runs between join attempts when Config.BootstrapExpect is
// set and this node has no Raft state: it asks every Join address who is
// there. When at least BootstrapExpect nodes answer (this one included),
// none of them knows a cluster, and this node has the smallest ID among
// them, it bootstraps a one-voter cluster; the others then join it through
// the same addresses. It reports whether it bootstrapped.
//
// Two nodes bootstrap only if they see different sets, each of at least
// BootstrapExpect nodes, with different smallest IDs: set BootstrapExpect
// to the number of nodes that start together (or fewer, down to the voter
// count), as with Consul's bootstrap_expect.
func (n *Node) maybeBootstrap(ctx context.Context) (bool, error) {
	if n.cfg.BootstrapExpect == 0 || n.hasState || n.booted.Load() || n.cfg.standalone() {
		return false, nil
	}
	r := n.raft.Load()
	if r == nil {
		return false, nil
	}
	ids := []p2p.NodeID{n.cfg.NodeID}
	for _, addr := range n.resolveJoin(ctx, nil) {
		b, err := n.post(ctx, addr, routeHello, "", nil, maxHops)
		if err != nil {
			continue // not up yet
		}
		var h helloResponse
		if err := json.Unmarshal(b, &h); err != nil {
			continue
		}
		if h.Clustered {
			return false, nil // join that cluster
		}
		if !slices.Contains(ids, h.ID) {
			ids = append(ids, h.ID)
		}
	}
	if len(ids) < n.cfg.BootstrapExpect {
		n.log.Info("waiting for the expected nodes before bootstrapping", "seen", len(ids), "expect", n.cfg.BootstrapExpect)
		return false, nil
	}
	if slices.MinFunc(ids, func(a, b p2p.NodeID) int { return strings.Compare(string(a), string(b)) }) != n.cfg.NodeID {
		return false, nil // the smallest ID bootstraps; keep joining
	}
	n.log.Info("bootstrapping a new cluster: the expected nodes are up and none knows a cluster", "nodes", len(ids))
	boot := raft.Configuration{Servers: []raft.Server{{Suffrage: raft.Voter, ID: raft.ServerID(n.cfg.NodeID), Address: raft.ServerAddress(n.raftAddr)}}}
	if err := r.BootstrapCluster(boot).Error(); err != nil {
		return false, fmt.Errorf("bootstrap Raft: %w", err)
	}
	n.booted.Store(true)
	return true, nil
}
