package cluster

import (
	"context"
	"maps"
	"slices"
	"sync"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// pendingDrops is the blobs this node no longer holds and has not yet told
// the leader about. A set: a burst of evictions loses no notice and costs
// one request per blob, and memory is bounded by the blobs the store held.
// One drop is sent at a time; an Announce of the same blob waits for it,
// so that the announcement lands after the drop, not before.
type pendingDrops struct {
	mu        sync.Mutex
	sent      *sync.Cond // signalled when the drop in flight ends
	set       map[v1.Hash]struct{}
	inflight  v1.Hash // the drop being sent, zero when none
	cancelled bool    // the blob in flight was announced again meanwhile
	wake      chan struct{}
}

func newPendingDrops() *pendingDrops {
	p := &pendingDrops{set: map[v1.Hash]struct{}{}, wake: make(chan struct{}, 1)}
	p.sent = sync.NewCond(&p.mu)
	return p
}

func (p *pendingDrops) add(d v1.Hash) {
	p.mu.Lock()
	p.set[d] = struct{}{}
	p.mu.Unlock()
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// cancel forgets d, which the node holds again, and waits for a drop of it
// already on its way.
func (p *pendingDrops) cancel(d v1.Hash) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.set, d)
	if p.inflight == d {
		p.cancelled = true
		for p.inflight == d {
			p.sent.Wait()
		}
	}
}

// pending returns the drops waiting now.
func (p *pendingDrops) pending() []v1.Hash {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Collect(maps.Keys(p.set))
}

// begin marks d in flight if it is still pending.
func (p *pendingDrops) begin(d v1.Hash) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, ok := p.set[d]; !ok {
		return false
	}
	delete(p.set, d)
	p.inflight, p.cancelled = d, false
	return true
}

// end ends the drop of d in flight; a failed one is pending again unless
// the blob was announced meanwhile.
func (p *pendingDrops) end(d v1.Hash, failed bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if failed && !p.cancelled {
		p.set[d] = struct{}{}
	}
	p.inflight, p.cancelled = v1.Hash{}, false
	p.sent.Broadcast()
}

// DropSoon records that this node no longer holds dgst and returns at
// once, for callers that must not block (a store's eviction callback). The
// node tells the leader in the background once it has joined, and retries
// every HeartbeatInterval while the leader cannot be reached; an Announce
// of dgst in between cancels the drop.
func (n *Node) DropSoon(dgst v1.Hash) { n.drops.add(dgst) }

// dropLoop sends the pending drops until ctx is done. A drop that fails
// is pending again and sent at the next pass, a HeartbeatInterval later.
func (n *Node) dropLoop(ctx context.Context) {
	retry := time.NewTicker(n.cfg.HeartbeatInterval)
	defer retry.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-n.drops.wake:
		case <-retry.C:
		}
		for _, d := range n.drops.pending() {
			if ctx.Err() != nil || !n.drops.begin(d) {
				continue
			}
			dctx, cancel := context.WithTimeout(ctx, n.cfg.RequestTimeout)
			err := n.Drop(dctx, d)
			cancel()
			if err != nil {
				n.log.Debug("dropping a removed blob from the cluster; retrying", "digest", d.String(), "err", err)
			}
			n.drops.end(d, err != nil)
		}
	}
}
