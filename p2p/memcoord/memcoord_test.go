package memcoord_test

import (
	"fmt"
	"testing"

	"github.com/thaw-dev/thaw/p2p"
	"github.com/thaw-dev/thaw/p2p/coordtest"
	"github.com/thaw-dev/thaw/p2p/memcoord"
)

func TestConformance(t *testing.T) {
	coordtest.Run(t, func(t *testing.T, n int) []p2p.Coordinator {
		c := memcoord.New()
		var out []p2p.Coordinator
		for i := range n {
			id := fmt.Sprintf("n%d", i)
			out = append(out, c.Join(p2p.Member{ID: p2p.NodeID(id), PeerAddr: id + ":5051"}))
		}
		return out
	})
}
