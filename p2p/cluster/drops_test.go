package cluster

import (
	"testing"
	"time"
)

// TestPendingDropsAnnounceWaits: an Announce of a blob whose drop is on
// its way waits for that drop to end (so it lands after it), and a failed
// drop of a blob announced meanwhile is not retried.
func TestPendingDropsAnnounceWaits(t *testing.T) {
	p := newPendingDrops()
	d := digest("evicted, then fetched again")
	p.add(d)
	if !p.begin(d) {
		t.Fatal("begin: the pending drop was not found")
	}
	announced := make(chan struct{})
	go func() {
		p.cancel(d)
		close(announced)
	}()
	select {
	case <-announced:
		t.Fatal("the announcement did not wait for the drop in flight")
	case <-time.After(50 * time.Millisecond):
	}
	p.end(d, true) // the drop failed
	<-announced
	if got := p.pending(); len(got) != 0 {
		t.Fatalf("pending after a failed drop of a blob announced again: %v", got)
	}

	// Without an announcement, a failed drop stays pending.
	p.add(d)
	p.begin(d)
	p.end(d, true)
	if got := p.pending(); len(got) != 1 || got[0] != d {
		t.Fatalf("pending after a failed drop: %v, want it again", got)
	}
}
