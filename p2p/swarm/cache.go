package swarm

import v1 "github.com/google/go-containerregistry/pkg/v1"

// doneCache keeps the piece digests of the most recently served complete
// blobs, so hashing a blob for peers happens once, within a memory bound.
type doneCache struct {
	max   int
	order []v1.Hash
	m     map[v1.Hash]*local
}

func newDoneCache(max int) *doneCache { return &doneCache{max: max, m: map[v1.Hash]*local{}} }

func (c *doneCache) Get(d v1.Hash) (*local, bool) {
	l, ok := c.m[d]
	return l, ok
}

func (c *doneCache) Add(d v1.Hash, l *local) {
	if _, ok := c.m[d]; ok {
		return
	}
	if len(c.order) >= c.max {
		delete(c.m, c.order[0])
		c.order = c.order[1:]
	}
	c.order = append(c.order, d)
	c.m[d] = l
}

func (c *doneCache) Remove(d v1.Hash) {
	delete(c.m, d)
}
