package cluster

import (
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/thaw-dev/thaw/p2p"
)

func rec(kind, key, node string, expires time.Time, v string) p2p.Record {
	return p2p.Record{Kind: kind, Key: key, Node: p2p.NodeID(node), Expires: expires.UTC(), Value: json.RawMessage(v)}
}

func keys(rs []p2p.Record) []string {
	out := []string{}
	for _, r := range rs {
		out = append(out, r.Key+"="+string(r.Value))
	}
	return out
}

func TestRecordsApply(t *testing.T) {
	t0 := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	s := newState()
	res := s.apply(1, command{Op: opRecords, Limit: 3, Put: []p2p.Record{
		rec("job", "b", "n1", t0.Add(time.Minute), `1`),
		rec("job", "a", "n2", t0.Add(time.Hour), `2`),
		rec("hint", "x", "", t0.Add(time.Minute), `3`),
	}})
	if res.Err != nil {
		t.Fatal(res.Err)
	}
	if got := keys(s.recordList("job", "")); !reflect.DeepEqual(got, []string{"a=2", "b=1"}) {
		t.Errorf("jobs: %v", got)
	}
	if got := keys(s.recordList("job", "n1")); !reflect.DeepEqual(got, []string{"b=1"}) {
		t.Errorf("jobs of n1: %v", got)
	}

	// Over the per-kind limit: refused whole, nothing changes.
	res = s.apply(2, command{Op: opRecords, Limit: 3, Put: []p2p.Record{
		rec("job", "a", "n2", t0.Add(time.Hour), `20`),
		rec("job", "c", "n1", t0.Add(time.Hour), `4`),
		rec("job", "d", "n1", t0.Add(time.Hour), `5`),
	}})
	if !errors.Is(res.Err, p2p.ErrStateFull) {
		t.Fatalf("over the limit: %v, want ErrStateFull", res.Err)
	}
	if got := keys(s.recordList("job", "")); !reflect.DeepEqual(got, []string{"a=2", "b=1"}) {
		t.Errorf("a refused put changed the state: %v", got)
	}
	// Deleting in the same command makes room; replacing does not grow.
	res = s.apply(3, command{Op: opRecords, Limit: 3,
		Put: []p2p.Record{rec("job", "a", "n2", t0.Add(time.Hour), `20`), rec("job", "c", "n1", t0.Add(time.Hour), `4`), rec("job", "d", "n1", t0.Add(time.Hour), `5`)},
		Del: []p2p.Record{{Kind: "job", Key: "b"}, {Kind: "job", Key: "absent"}},
	})
	if res.Err != nil {
		t.Fatal(res.Err)
	}
	if got := keys(s.recordList("job", "")); !reflect.DeepEqual(got, []string{"a=20", "c=4", "d=5"}) {
		t.Errorf("after delete+put: %v", got)
	}

	// Expiry is by the command's time, so every voter deletes alike.
	s.apply(4, command{Op: opExpireRecords, Now: t0.Add(time.Minute)})
	if got := keys(s.recordList("hint", "")); len(got) != 0 {
		t.Errorf("expired hint still there: %v", got)
	}
	if got := len(s.recordList("job", "")); got != 3 {
		t.Errorf("jobs after expiry: %d, want 3", got)
	}

	// A snapshot round trip keeps every record.
	snap, err := json.Marshal(s.snapshot())
	if err != nil {
		t.Fatal(err)
	}
	var data snapshotData
	if err := json.Unmarshal(snap, &data); err != nil {
		t.Fatal(err)
	}
	if got := keys(stateFrom(data).recordList("job", "")); !reflect.DeepEqual(got, []string{"a=20", "c=4", "d=5"}) {
		t.Errorf("after a snapshot: %v", got)
	}
}

func TestCheckRecords(t *testing.T) {
	now := time.Now()
	for _, tc := range []struct {
		name string
		put  []p2p.Record
		want string
	}{
		{"no kind", []p2p.Record{rec("", "k", "", now, `1`)}, "needs a kind and a key"},
		{"no key", []p2p.Record{rec("job", "", "", now, `1`)}, "needs a kind and a key"},
		{"no expiry", []p2p.Record{{Kind: "job", Key: "k", Value: json.RawMessage(`1`)}}, "no expiry"},
		{"value too big", []p2p.Record{rec("job", "k", "", now, `"`+strings.Repeat("x", 100)+`"`)}, "over the limit of 64"},
		{"key too long", []p2p.Record{rec("job", strings.Repeat("k", 600), "", now, `1`)}, "at most 512 bytes"},
	} {
		err := checkRecords(tc.put, nil, 64)
		if !errors.Is(err, errBadRequest) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want a bad request saying %q", tc.name, err, tc.want)
		}
	}
}

// TestRecordsSurviveLeaderChange writes records from a client, reads them
// from every node, kills the leader and finds them on the new one; expired
// records are deleted by whichever node leads.
func TestRecordsSurviveLeaderChange(t *testing.T) {
	h := newHarness(t)
	nodes := formCluster(h, 4, func(c *Config) { c.ExpireAfter = 2 * time.Second; c.MaxRecordsPerKind = 5 })
	ctx := ctxT(t)
	_, clients := roles(nodes)
	if len(clients) == 0 {
		t.Fatal("no client among 4 nodes")
	}
	far := time.Now().Add(time.Hour)
	var put []p2p.Record
	for i := range 5 {
		put = append(put, rec("job", fmt.Sprintf("k%d", i), string(clients[0].id), far, fmt.Sprint(i)))
	}
	soon := rec("hint", "soon", "", time.Now().Add(1500*time.Millisecond), `"h"`)
	if err := clients[0].node.PutRecords(ctx, append(put, soon), nil); err != nil {
		t.Fatal(err)
	}
	if err := clients[0].node.PutRecords(ctx, []p2p.Record{rec("job", "k9", "", far, `9`)}, nil); !errors.Is(err, p2p.ErrStateFull) {
		t.Errorf("a sixth job: %v, want ErrStateFull across the wire", err)
	}
	want := []string{"k0=0", "k1=1", "k2=2", "k3=3", "k4=4"}
	// Reads are served by any voter, so they may lag a commit briefly.
	eventually(t, 5*time.Second, func() error {
		for _, tn := range nodes {
			got, err := tn.node.Records(ctx, "job", clients[0].id)
			if err != nil || !reflect.DeepEqual(keys(got), want) {
				return fmt.Errorf("%s reads %v, %v; want %v", tn.id, keys(got), err, want)
			}
		}
		return nil
	})
	old := leaderOf(t, nodes...)
	old.kill()
	var rest []*testNode
	for _, tn := range nodes {
		if tn != old {
			rest = append(rest, tn)
		}
	}
	leader := leaderOf(t, rest...)
	if !leader.node.Leading() || old == leader {
		t.Fatal("no new leader")
	}
	eventually(t, 10*time.Second, func() error {
		for _, tn := range rest {
			got, err := tn.node.Records(ctx, "job", "")
			if err != nil || !reflect.DeepEqual(keys(got), want) {
				return fmt.Errorf("%s reads %v, %v after the leader change", tn.id, keys(got), err)
			}
			hints, err := tn.node.Records(ctx, "hint", "")
			if err != nil || len(hints) != 0 {
				return fmt.Errorf("%s still has the expired hint: %v, %v", tn.id, keys(hints), err)
			}
		}
		return nil
	})
}
