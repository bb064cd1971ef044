package cluster

import (
	"testing"

	"github.com/thaw-dev/thaw/p2p"
	"github.com/thaw-dev/thaw/p2p/coordtest"
)

// TestCoordinatorConformance runs the p2p.Coordinator suite on in-process
// Raft clusters (the first node bootstraps, the others join).
func TestCoordinatorConformance(t *testing.T) {
	coordtest.Run(t, func(t *testing.T, n int) []p2p.Coordinator {
		nodes := formCluster(newHarness(t), n)
		leaderOf(t, nodes...)
		var out []p2p.Coordinator
		for _, tn := range nodes {
			out = append(out, tn.node)
		}
		return out
	})
}
