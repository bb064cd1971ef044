package cluster

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"reflect"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/hashicorp/raft"

	"github.com/thaw-dev/thaw/p2p"
)

func digest(s string) v1.Hash {
	h, _, err := v1.SHA256(bytes.NewReader([]byte(s)))
	if err != nil {
		panic(err)
	}
	return h
}

var (
	dA = digest("a")
	dB = digest("b")
)

func joinCmd(id string, voter bool, holdings ...Holding) command {
	return command{Op: opJoin, Member: &memberRecord{ID: p2p.NodeID(id), PeerAddr: id + ":1", Voter: voter}, Holdings: holdings}
}

func claimCmd(id string, d v1.Hash) command {
	return command{Op: opClaim, Node: p2p.NodeID(id), Digest: d, Size: 10}
}

func announceCmd(id string, d v1.Hash, complete bool) command {
	return command{Op: opAnnounce, Node: p2p.NodeID(id), Digest: d, Size: 10, Complete: complete}
}

func dropCmd(id string, d v1.Hash) command {
	return command{Op: opDrop, Node: p2p.NodeID(id), Digest: d}
}

// applyAll applies cmds at indexes 1, 2, ... and returns the last result.
func applyAll(t *testing.T, s *state, cmds ...command) applyResult {
	t.Helper()
	var res applyResult
	for i, c := range cmds {
		res = s.apply(uint64(i+1), c)
	}
	return res
}

func TestClaimSeeder(t *testing.T) {
	members := []command{joinCmd("a", true), joinCmd("b", false), joinCmd("c", false)}
	tests := []struct {
		name       string
		cmds       []command
		wantSeeder p2p.NodeID
		wantErr    error
	}{
		{"first claimant wins", []command{claimCmd("a", dA)}, "a", nil},
		{"second claimant gets the first", []command{claimCmd("a", dA), claimCmd("b", dA)}, "a", nil},
		{"seeder claiming again keeps it", []command{claimCmd("a", dA), claimCmd("b", dA), claimCmd("a", dA)}, "a", nil},
		{"in-progress holder does not block", []command{announceCmd("c", dA, false), claimCmd("b", dA)}, "b", nil},
		{"complete holder: no seeder", []command{announceCmd("c", dA, true), claimCmd("b", dA)}, "", nil},
		{"complete copy clears the seeder", []command{claimCmd("a", dA), announceCmd("a", dA, true), claimCmd("b", dA)}, "", nil},
		{"dropped seeder is replaced", []command{claimCmd("a", dA), dropCmd("a", dA), claimCmd("b", dA)}, "b", nil},
		{"seeder that left is replaced", []command{claimCmd("b", dA), {Op: opLeave, Node: "b"}, claimCmd("c", dA)}, "c", nil},
		{"expired seeder is replaced", []command{claimCmd("b", dA), {Op: opExpire, Node: "b", JoinIndex: 2}, claimCmd("c", dA)}, "c", nil},
		{"expire of an older join is ignored", []command{claimCmd("b", dA), {Op: opExpire, Node: "b", JoinIndex: 1}, claimCmd("c", dA)}, "b", nil},
		{"rejoin clears seeder roles", []command{claimCmd("b", dA), joinCmd("b", false), claimCmd("c", dA)}, "c", nil},
		{"non-member cannot claim", []command{claimCmd("x", dA)}, "", p2p.ErrNotMember},
		{"expired member cannot claim", []command{{Op: opExpire, Node: "b", JoinIndex: 2}, claimCmd("b", dA)}, "", p2p.ErrNotMember},
		{"gone voter cannot claim", []command{{Op: opLeave, Node: "a"}, claimCmd("a", dA)}, "", p2p.ErrNotMember},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newState()
			res := applyAll(t, s, append(members[:len(members):len(members)], tt.cmds...)...)
			if !errors.Is(res.Err, tt.wantErr) {
				t.Fatalf("err = %v, want %v", res.Err, tt.wantErr)
			}
			if got := s.blob(dA).Seeder; got != tt.wantSeeder {
				t.Errorf("seeder = %q, want %q", got, tt.wantSeeder)
			}
			if tt.wantErr == nil && res.State.Seeder != tt.wantSeeder {
				t.Errorf("answer's seeder = %q, want %q", res.State.Seeder, tt.wantSeeder)
			}
		})
	}
}

func TestHoldersAndBoundedState(t *testing.T) {
	s := newState()
	res := applyAll(t, s,
		joinCmd("a", true, Holding{Digest: dB, Size: 5, Complete: true}),
		joinCmd("b", false),
		announceCmd("b", dA, false),
		announceCmd("a", dA, true),
	)
	// Since is the index of each holder's first announcement: b came first.
	want := p2p.BlobState{Digest: dA, Size: 10, Holders: []p2p.Holder{
		{Node: "a", PeerAddr: "a:1", Complete: true, Since: 4},
		{Node: "b", PeerAddr: "b:1", Complete: false, Since: 3},
	}}
	if !reflect.DeepEqual(res.State, want) {
		t.Errorf("state = %+v, want %+v", res.State, want)
	}
	// Announcing again (complete now) keeps the holder's place, and a
	// snapshot keeps it too.
	s.apply(9, announceCmd("b", dA, true))
	if got := stateFrom(s.snapshot()).blob(dA).Holders; len(got) != 2 || got[1].Since != 3 || !got[1].Complete {
		t.Errorf("holders after b's second announcement and a snapshot: %+v, want b complete with Since 3", got)
	}
	if got := s.blob(dB); len(got.Holders) != 1 || got.Size != 5 {
		t.Errorf("inventory of the join not recorded: %+v", got)
	}
	// A rejoin replaces the node's holdings with its inventory.
	s.apply(10, joinCmd("a", true))
	if _, ok := s.blobs[dB]; ok {
		t.Error("blob held by nobody after a rejoin is still in the state")
	}
	s.apply(11, dropCmd("b", dA))
	s.apply(12, dropCmd("x", dA)) // not a member: a no-op, not an error
	if _, ok := s.blobs[dA]; ok {
		t.Error("blob held by nobody is still in the state")
	}
	if len(s.byNode) != 0 {
		t.Errorf("index not emptied: %v", s.byNode)
	}
	if got := s.blob(dA); !reflect.DeepEqual(got, p2p.BlobState{Digest: dA}) {
		t.Errorf("unknown blob = %+v, want the zero state with its digest", got)
	}
	// Clients that leave are removed; voters stay, gone.
	s.apply(13, command{Op: opLeave, Node: "b"})
	s.apply(14, command{Op: opLeave, Node: "a"})
	if _, ok := s.members["b"]; ok {
		t.Error("client still a member after leaving")
	}
	if m := s.members["a"]; m == nil || !m.Gone {
		t.Errorf("voter after leaving = %+v, want a gone member", m)
	}
	if res := s.apply(15, command{Op: "bogus"}); !errors.Is(res.Err, errBadRequest) {
		t.Errorf("unknown op: %v", res.Err)
	}
}

func TestSnapshotRestore(t *testing.T) {
	f := newFSM()
	cmds := []command{
		joinCmd("a", true, Holding{Digest: dB, Size: 5, Complete: true}),
		joinCmd("b", false),
		claimCmd("b", dA),
		announceCmd("b", dA, false),
	}
	for i, c := range cmds {
		data, _ := json.Marshal(c)
		f.Apply(&raft.Log{Index: uint64(i + 1), Data: data})
	}
	snap, err := f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	sink := &memSink{}
	if err := snap.Persist(sink); err != nil {
		t.Fatal(err)
	}
	snap.Release()
	if !sink.closed {
		t.Error("Persist did not close the sink")
	}

	g := newFSM()
	g.Apply(&raft.Log{Index: 1, Data: mustJSON(joinCmd("stale", true))})
	if err := g.Restore(io.NopCloser(bytes.NewReader(sink.Bytes()))); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(f.st.snapshot(), g.st.snapshot()) {
		t.Errorf("restored state differs:\n%+v\n%+v", g.st.snapshot(), f.st.snapshot())
	}
	if !reflect.DeepEqual(f.st.byNode, g.st.byNode) {
		t.Errorf("restored index differs: %v, want %v", g.st.byNode, f.st.byNode)
	}
	if _, ok := g.member("stale"); ok {
		t.Error("Restore kept state from before")
	}
	// The restored FSM goes on from there.
	g.Apply(&raft.Log{Index: 5, Data: mustJSON(command{Op: opExpire, Node: "b", JoinIndex: 2})})
	if st := g.blob(dA); st.Seeder != "" || len(st.Holders) != 0 {
		t.Errorf("after expiring b: %+v", st)
	}
	if res := g.Apply(&raft.Log{Index: 6, Data: []byte("{")}).(applyResult); !errors.Is(res.Err, errBadRequest) {
		t.Errorf("garbage command: %v", res.Err)
	}
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

type memSink struct {
	bytes.Buffer
	closed bool
}

func (s *memSink) ID() string                  { return "mem" }
func (s *memSink) Cancel() error               { return nil }
func (s *memSink) Close() error                { s.closed = true; return nil }
func (s *memSink) Write(p []byte) (int, error) { return s.Buffer.Write(p) }
