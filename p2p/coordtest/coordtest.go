package coordtest

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/thaw-dev/thaw/p2p"
)

// NewCluster returns the coordinators of n members of one new cluster,
// ready for calls; the suite asks for n <= 3.
type NewCluster func(t *testing.T, n int) []p2p.Coordinator

// Run runs the suite. Reads may be served by a member that has not applied
// the latest write yet (p2p.Coordinator.Blob may be slightly stale), so the
// suite waits up to 10 s for a read to show what was written.
func Run(t *testing.T, newCluster NewCluster) {
	t.Run("UnknownBlob", func(t *testing.T) { testUnknownBlob(t, newCluster) })
	t.Run("FirstClaimantSeeds", func(t *testing.T) { testFirstClaimantSeeds(t, newCluster) })
	t.Run("HoldersInOrderOfArrival", func(t *testing.T) { testHoldersInOrder(t, newCluster) })
	t.Run("CompleteHolderEndsSeeding", func(t *testing.T) { testCompleteEndsSeeding(t, newCluster) })
	t.Run("Drop", func(t *testing.T) { testDrop(t, newCluster) })
}

func digest(s string) v1.Hash {
	sum := sha256.Sum256([]byte(s))
	return v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(sum[:])}
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	t.Cleanup(cancel)
	return c
}

// eventually reads dgst through c until check accepts the state.
func eventually(t *testing.T, c p2p.Coordinator, dgst v1.Hash, check func(p2p.BlobState) error) p2p.BlobState {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		st, err := c.Blob(ctx(t), dgst)
		if err == nil {
			if err = check(st); err == nil {
				return st
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s reading %s: %v (state %+v)", c.Self().ID, dgst, err, st)
		}
		time.Sleep(20 * time.Millisecond) // polling a replicated read, with a deadline
	}
}

func holder(st p2p.BlobState, id p2p.NodeID) (p2p.Holder, bool) {
	for _, h := range st.Holders {
		if h.Node == id {
			return h, true
		}
	}
	return p2p.Holder{}, false
}

func testUnknownBlob(t *testing.T, newCluster NewCluster) {
	cs := newCluster(t, 1)
	d := digest("unknown")
	st, err := cs[0].Blob(ctx(t), d)
	if err != nil {
		t.Fatalf("Blob of an unknown digest: %v, want a zero state", err)
	}
	if st.Digest != d || st.Seeder != "" || len(st.Holders) != 0 || st.Size != 0 {
		t.Fatalf("Blob of an unknown digest: %+v, want the digest set and nothing else", st)
	}
}

func testFirstClaimantSeeds(t *testing.T, newCluster NewCluster) {
	cs := newCluster(t, 2)
	a, b := cs[0], cs[1]
	d := digest("claim")
	st, err := a.ClaimSeeder(ctx(t), d, 100)
	if err != nil {
		t.Fatal(err)
	}
	if st.Seeder != a.Self().ID || st.Size != 100 {
		t.Fatalf("first claim: %+v, want %s named seeder of 100 bytes", st, a.Self().ID)
	}
	h, ok := holder(st, a.Self().ID)
	if !ok || h.Complete || h.Since == 0 {
		t.Fatalf("the seeder is not an in-progress holder with a Since: %+v", st.Holders)
	}
	st, err = b.ClaimSeeder(ctx(t), d, 100)
	if err != nil {
		t.Fatal(err)
	}
	if st.Seeder != a.Self().ID {
		t.Fatalf("second claim: seeder %q, want %s kept", st.Seeder, a.Self().ID)
	}
	if _, ok := holder(st, b.Self().ID); ok {
		t.Fatalf("a claimant not named seeder became a holder: %+v", st.Holders)
	}
	if _, ok := holder(st, a.Self().ID); !ok {
		t.Fatalf("the second claimant does not see the seeder among the holders: %+v", st.Holders)
	}
}

func testHoldersInOrder(t *testing.T, newCluster NewCluster) {
	cs := newCluster(t, 3)
	d := digest("order")
	if _, err := cs[0].ClaimSeeder(ctx(t), d, 10); err != nil {
		t.Fatal(err)
	}
	for _, c := range cs[1:] {
		if err := c.Announce(ctx(t), d, 10, false); err != nil {
			t.Fatal(err)
		}
	}
	since := func(st p2p.BlobState) ([]uint64, error) {
		var out []uint64
		for _, c := range cs {
			h, ok := holder(st, c.Self().ID)
			if !ok {
				return nil, fmt.Errorf("%s is not a holder", c.Self().ID)
			}
			out = append(out, h.Since)
		}
		return out, nil
	}
	var first []uint64
	eventually(t, cs[2], d, func(st p2p.BlobState) error {
		s, err := since(st)
		if err != nil {
			return err
		}
		if !(0 < s[0] && s[0] < s[1] && s[1] < s[2]) {
			return fmt.Errorf("Since %v: want increasing in the order of arrival", s)
		}
		first = s
		return nil
	})
	// Announcing again, complete now, keeps a holder's place.
	if err := cs[1].Announce(ctx(t), d, 10, true); err != nil {
		t.Fatal(err)
	}
	eventually(t, cs[0], d, func(st p2p.BlobState) error {
		h, ok := holder(st, cs[1].Self().ID)
		if !ok || !h.Complete {
			return fmt.Errorf("%s not complete yet", cs[1].Self().ID)
		}
		if h.Since != first[1] {
			return fmt.Errorf("%s's Since went from %d to %d on a second announcement", h.Node, first[1], h.Since)
		}
		return nil
	})
}

func testCompleteEndsSeeding(t *testing.T, newCluster NewCluster) {
	cs := newCluster(t, 2)
	a, b := cs[0], cs[1]
	d := digest("complete")
	if _, err := a.ClaimSeeder(ctx(t), d, 10); err != nil {
		t.Fatal(err)
	}
	if err := a.Announce(ctx(t), d, 10, true); err != nil {
		t.Fatal(err)
	}
	eventually(t, b, d, func(st p2p.BlobState) error {
		if h, ok := holder(st, a.Self().ID); !ok || !h.Complete || st.Seeder != "" {
			return fmt.Errorf("want %s complete and no seeder", a.Self().ID)
		}
		return nil
	})
	st, err := b.ClaimSeeder(ctx(t), d, 10)
	if err != nil {
		t.Fatal(err)
	}
	if st.Seeder != "" {
		t.Fatalf("a claim with a complete holder named %q seeder; nobody needs the origin", st.Seeder)
	}
}

func testDrop(t *testing.T, newCluster NewCluster) {
	cs := newCluster(t, 2)
	a, b := cs[0], cs[1]
	d := digest("drop")
	if _, err := a.ClaimSeeder(ctx(t), d, 10); err != nil {
		t.Fatal(err)
	}
	if err := b.Announce(ctx(t), d, 10, false); err != nil {
		t.Fatal(err)
	}
	if err := a.Drop(ctx(t), d); err != nil {
		t.Fatal(err)
	}
	eventually(t, b, d, func(st p2p.BlobState) error {
		if _, ok := holder(st, a.Self().ID); ok || st.Seeder != "" {
			return fmt.Errorf("want %s gone and no seeder", a.Self().ID)
		}
		if _, ok := holder(st, b.Self().ID); !ok {
			return fmt.Errorf("want %s still a holder", b.Self().ID)
		}
		return nil
	})
	if err := b.Drop(ctx(t), d); err != nil {
		t.Fatal(err)
	}
	eventually(t, a, d, func(st p2p.BlobState) error {
		if len(st.Holders) != 0 {
			return fmt.Errorf("holders left after every one dropped")
		}
		return nil
	})
}
