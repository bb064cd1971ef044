package cluster

import (
	"bytes"
	"encoding/json"
	"io"
	"testing"

	"github.com/hashicorp/raft"
)

// FuzzApply: commands are built from requests that arrive over the network
// and are replayed from disk; whatever bytes a log entry holds, applying a
// sequence of them never panics, and the state stays bounded and coherent:
// every blob has a holder or a seeder, and a snapshot restores to the same
// state.
func FuzzApply(f *testing.F) {
	d := `"sha256:` + string(bytes.Repeat([]byte("a"), 64)) + `"`
	for _, s := range []string{
		`{"op":"join","member":{"id":"n1","peerAddr":"10.0.0.1:5051","voter":true},"holdings":[{"digest":` + d + `,"size":5,"complete":true}]}`,
		`{"op":"claim","node":"n1","digest":` + d + `,"size":10}`,
		`{"op":"announce","node":"n1","digest":` + d + `,"size":10,"complete":false}`,
		`{"op":"drop","node":"n1","digest":` + d + `}`,
		`{"op":"expire","node":"n1","joinIndex":1}`,
		`{"op":"leave","node":"n1"}`,
		`{"op":"nonsense"}`,
		`not json`,
	} {
		f.Add([]byte(s), []byte(`{"op":"claim","node":"n2","digest":`+d+`}`))
	}
	f.Fuzz(func(t *testing.T, a, b []byte) {
		m := newFSM()
		for i, data := range [][]byte{a, b, a} {
			m.Apply(&raft.Log{Index: uint64(i + 1), Data: data})
		}
		m.mu.RLock()
		for dg, rec := range m.st.blobs {
			if len(rec.holders) == 0 && rec.seeder == "" {
				t.Fatalf("blob %s kept with no holder and no seeder", dg)
			}
		}
		m.mu.RUnlock()
		snap, err := m.Snapshot()
		if err != nil {
			t.Fatal(err)
		}
		var buf bytes.Buffer
		if err := snap.Persist(&fakeSink{Buffer: &buf}); err != nil {
			t.Fatal(err)
		}
		again := newFSM()
		if err := again.Restore(io.NopCloser(bytes.NewReader(buf.Bytes()))); err != nil {
			t.Fatalf("a snapshot of the state does not restore: %v", err)
		}
		x, _ := json.Marshal(m.st.snapshot())
		y, _ := json.Marshal(again.st.snapshot())
		if !bytes.Equal(x, y) {
			t.Fatalf("restored state differs:\n%s\n%s", x, y)
		}
	})
}

type fakeSink struct{ *bytes.Buffer }

func (fakeSink) ID() string    { return "fuzz" }
func (fakeSink) Cancel() error { return nil }
func (fakeSink) Close() error  { return nil }
