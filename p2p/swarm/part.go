package swarm

import (
	"sync"
)

// holdBack is how many bytes at the end of a piece a node keeps from the
// peers it forwards the piece to until the piece is verified (or, at the
// seeder, whole and hashed). A piece that turns out bad is never completed
// downstream: its forwarders abort their responses, so the askers see a
// broken transfer, not a bad piece, and blame only the peer that sent bad
// bytes of its own.
const holdBack = 1

// part is a piece arriving on this node that peers may stream while it
// arrives (cut-through): its buffer fills from the front; once whole and
// verified it is done, or it failed and its readers abort.
//
// Bytes below n are never written again, so readers may read buf[:n]
// outside the lock once they have seen n.
type part struct {
	buf []byte

	mu      sync.Mutex
	n       int64
	state   partState
	changed chan struct{} // closed and replaced on every change
}

type partState int

const (
	partArriving partState = iota
	partDone
	partFailed
)

func newPart(size int64) *part {
	return &part{buf: make([]byte, size), changed: make(chan struct{})}
}

func (p *part) signalLocked() {
	close(p.changed)
	p.changed = make(chan struct{})
}

// advance records k more bytes written at buf[n:].
func (p *part) advance(k int) {
	if k == 0 {
		return
	}
	p.mu.Lock()
	p.n += int64(k)
	p.signalLocked()
	p.mu.Unlock()
}

// arrivedBytes is how many bytes arrived.
func (p *part) arrivedBytes() int64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.n
}

// write copies b to the end of what arrived.
func (p *part) write(b []byte) {
	p.mu.Lock()
	k := copy(p.buf[p.n:], b)
	p.n += int64(k)
	p.signalLocked()
	p.mu.Unlock()
}

// finish ends the part: done (whole and verified) or failed.
func (p *part) finish(ok bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.state != partArriving {
		return
	}
	p.state = partFailed
	if ok {
		p.state = partDone
	}
	p.signalLocked()
}

// servable waits until bytes past sent may be sent on, or the part ended,
// or stop is closed. It returns how far the bytes may be sent (all that
// arrived once done, all but the last holdBack bytes before) and the state.
func (p *part) servable(sent int64, stop <-chan struct{}) (int64, partState) {
	return p.wait(sent, holdBack, stop)
}

// arrived is servable without the hold-back: every byte that arrived, for a
// stream whose receiver verifies each piece against trusted digests itself
// (see Swarm.serveStream).
func (p *part) arrived(sent int64, stop <-chan struct{}) (int64, partState) {
	return p.wait(sent, 0, stop)
}

func (p *part) wait(sent, hold int64, stop <-chan struct{}) (int64, partState) {
	for {
		p.mu.Lock()
		st, n, ch := p.state, p.n, p.changed
		p.mu.Unlock()
		limit := n
		if st == partArriving {
			limit = min(n, int64(len(p.buf))-hold)
		}
		if st != partArriving || limit > sent {
			return limit, st
		}
		select {
		case <-ch:
		case <-stop:
			return limit, partFailed
		}
	}
}
