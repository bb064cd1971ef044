package sim

import (
	"cmp"
	"fmt"
	"slices"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/thaw-dev/thaw/p2p"
	"github.com/thaw-dev/thaw/predictor"
)

// layerState is one layer on one node.
type layerState struct {
	present bool
	// readyAt: the layer is complete from then on (seconds of replay).
	readyAt float64
	// lastUsed and seq order layers for LRU eviction: seq breaks ties in
	// the order of use.
	lastUsed float64
	seq      uint64
	pinUntil float64
	inUse    int32
	// prefetched: a prefetch brought the layer and no start has used it
	// since.
	prefetched bool
}

// node is one node's disk, link and instance slots.
type node struct {
	id       p2p.NodeID
	layers   []layerState // by workload layer index
	present  []int32      // indices of present layers
	used     int64
	linkFree float64 // when the prefetch queue drains
	running  int
}

// cluster is the state of one policy's replay.
type cluster struct {
	cfg     Config
	w       *Workload
	nodes   []*node
	holders [][]p2p.NodeID // nodes holding each layer (complete or arriving)
	seq     uint64
	stats   *Result
	onWaste func(bytes int64)
	scratch []int32
}

func newCluster(cfg Config, w *Workload, stats *Result) *cluster {
	c := &cluster{cfg: cfg, w: w, holders: make([][]p2p.NodeID, len(w.layers)), stats: stats}
	for i := range cfg.Nodes {
		c.nodes = append(c.nodes, &node{id: p2p.NodeID(fmt.Sprintf("node-%02d", i)), layers: make([]layerState, len(w.layers))})
	}
	return c
}

// touch marks l used on n at now.
func (c *cluster) touch(n *node, l int32, now float64) {
	c.seq++
	st := &n.layers[l]
	st.lastUsed, st.seq = now, c.seq
}

// makeRoom frees disk on n for need bytes of content arriving from start
// on: it evicts layers no instance uses in LRU order, first the unpinned
// ones and then, for a demand pull (a start waits for it), pinned ones. A
// prefetch evicts only layers complete by start; a demand pull also
// cancels unpinned prefetches still arriving. A prefetch that does not fit
// fails; a demand pull that does not fit (everything left is in use) goes
// over budget and is counted.
func (c *cluster) makeRoom(n *node, need int64, start float64, demand bool) bool {
	budget := c.cfg.DiskBudget
	if n.used+need <= budget {
		return true
	}
	for pass := 0; pass < 2 && n.used+need > budget; pass++ {
		if pass == 1 && !demand {
			break
		}
		cand := c.scratch[:0]
		for _, l := range n.present {
			st := &n.layers[l]
			if st.inUse > 0 || (st.readyAt > start && !(demand && pass == 0 && st.prefetched)) {
				continue
			}
			if pinned := st.pinUntil > start; pinned != (pass == 1) {
				continue
			}
			cand = append(cand, l)
		}
		slices.SortFunc(cand, func(a, b int32) int {
			x, y := &n.layers[a], &n.layers[b]
			return cmp.Or(cmp.Compare(x.lastUsed, y.lastUsed), cmp.Compare(x.seq, y.seq))
		})
		for _, l := range cand {
			if n.used+need <= budget {
				break
			}
			c.evict(n, l)
		}
		c.scratch = cand
	}
	if n.used+need <= budget {
		return true
	}
	if demand {
		c.stats.OverBudget++
		return true
	}
	return false
}

func (c *cluster) evict(n *node, l int32) {
	st := &n.layers[l]
	size := c.w.layers[l].Size
	if st.prefetched {
		c.stats.UnusedBytes += size
		if c.onWaste != nil {
			c.onWaste(size)
		}
	}
	*st = layerState{}
	n.used -= size
	h := c.holders[l]
	k := slices.Index(h, n.id)
	h[k] = h[len(h)-1]
	c.holders[l] = h[:len(h)-1]
	i := slices.Index(n.present, l)
	n.present[i] = n.present[len(n.present)-1]
	n.present = n.present[:len(n.present)-1]
}

// add puts l on n, arriving until readyAt, and counts where its bytes came
// from: the origin when no node held it, a peer otherwise.
func (c *cluster) add(n *node, l int32, now, readyAt float64) {
	size := c.w.layers[l].Size
	if len(c.holders[l]) == 0 {
		c.stats.OriginBytes += size
	} else {
		c.stats.PeerBytes += size
	}
	st := &n.layers[l]
	st.present, st.readyAt = true, readyAt
	c.touch(n, l, now)
	n.used += size
	n.present = append(n.present, l)
	c.holders[l] = append(c.holders[l], n.id)
}

// prefetch brings l to n through the node's prefetch queue and pins it
// until pinUntil. It reports whether the layer is (or will be) there.
func (c *cluster) prefetch(n *node, l int32, now, pinUntil float64) bool {
	st := &n.layers[l]
	if !st.present {
		size := c.w.layers[l].Size
		start := max(n.linkFree, now)
		if !c.makeRoom(n, size, start, false) {
			return false
		}
		n.linkFree = start + float64(size)/c.cfg.Bandwidth
		c.add(n, l, now, n.linkFree)
		st.prefetched = true
		c.stats.PrefetchBytes += size
	}
	st.pinUntil = max(st.pinUntil, pinUntil)
	return true
}

// background brings l to n if it fits in free disk, evicting nothing, and
// makes it the first to be evicted until a start uses it; it pins l until
// pinUntil if l is (now) there.
func (c *cluster) background(n *node, l int32, now, pinUntil float64) {
	st := &n.layers[l]
	if !st.present {
		size := c.w.layers[l].Size
		if n.used+size > c.cfg.DiskBudget {
			return
		}
		start := max(n.linkFree, now)
		n.linkFree = start + float64(size)/c.cfg.Bandwidth
		c.add(n, l, now, n.linkFree)
		st.prefetched = true
		st.lastUsed = -1
		c.stats.PrefetchBytes += size
	}
	st.pinUntil = max(st.pinUntil, pinUntil)
}

// view is the planner's view of the cluster at one moment.
type view struct {
	c     *cluster
	infos []predictor.NodeInfo
	index map[p2p.NodeID]*node
}

func newView(c *cluster) *view {
	v := &view{c: c, index: map[p2p.NodeID]*node{}}
	for _, n := range c.nodes {
		v.infos = append(v.infos, predictor.NodeInfo{ID: n.id, Budget: c.cfg.DiskBudget})
		v.index[n.id] = n
	}
	return v
}

func (v *view) refresh() {
	for i, n := range v.c.nodes {
		in := &v.infos[i]
		in.Load = float64(n.running) / float64(v.c.cfg.Slots)
		in.Used, in.InUse = n.used, 0
		for _, l := range n.present {
			if n.layers[l].inUse > 0 {
				in.InUse += v.c.w.layers[l].Size
			}
		}
	}
}

// Nodes implements predictor.ClusterView.
func (v *view) Nodes() []predictor.NodeInfo { return v.infos }

// Holders implements predictor.ClusterView.
func (v *view) Holders(dgst v1.Hash) []p2p.NodeID {
	if l, ok := v.c.w.byHash[dgst]; ok {
		return v.c.holders[l]
	}
	return nil
}

// Has implements predictor.ClusterView.
func (v *view) Has(id p2p.NodeID, dgst v1.Hash) bool {
	n := v.index[id]
	l, ok := v.c.w.byHash[dgst]
	return n != nil && ok && n.layers[l].present
}
