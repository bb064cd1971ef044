package swarm

import (
	"encoding/json"
	"strings"
	"testing"
)

// FuzzBitmap: whatever a peer sends as its bitmap, decoding it and taking
// its digests never panics, never records a digest for a piece outside the
// blob or a malformed one, and never moves hashFrom backwards.
func FuzzBitmap(f *testing.F) {
	h := strings.Repeat("ab", 32)
	for _, s := range []string{
		`{"size":1000,"pieceSize":256,"version":1,"have":"Dw==","trusted":true,"hashFrom":0,"hashes":["` + h + `","` + h + `"]}`,
		`{"size":1000,"pieceSize":256,"trusted":true,"hashFrom":3,"hashes":["` + h + `","` + h + `","` + h + `"]}`,
		`{"trusted":true,"hashFrom":-1,"hashes":["x"]}`,
		`{}`,
	} {
		f.Add([]byte(s), 0)
		f.Add([]byte(s), 3)
	}
	f.Fuzz(func(t *testing.T, data []byte, from int) {
		var b bitmap
		if json.Unmarshal(data, &b) != nil {
			return
		}
		l := newLocal(1000, 256, false, false) // 4 pieces
		from = min(max(from, 0), l.n)
		next, _ := l.learnHashes(b, from)
		if next < from || next > l.n {
			t.Fatalf("hashFrom went from %d to %d (pieces: %d)", from, next, l.n)
		}
		for i, got := range l.hashes {
			if got != "" && !validHex(got) {
				t.Fatalf("piece %d got a malformed digest %q", i, got)
			}
		}
		for i := range l.n + 3 {
			has(b.Have, i) // must not panic on short or long bitmaps
			has(b.Part, i)
		}
	})
}
