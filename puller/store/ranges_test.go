package store

import (
	"bytes"
	"math/rand/v2"
	"testing"
)

func FuzzParseRanges(f *testing.F) {
	for _, seed := range []string{"", "0-10\n", "0-10\n20-30\n", "0-10\n10-20\n", "5-5\n", "0-101\n", "20-30\n0-10\n",
		"0-10", "a-b\n", "-1-5\n", "0-10\n\n", "+1-2\n", "00000000000000000001-2\n", "9223372036854775807-9223372036854775808\n"} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		const size = 100
		rs, err := parseRanges(raw, size)
		if err != nil {
			return
		}
		prev := int64(-1)
		for _, r := range rs {
			if r.Start <= prev || r.Start >= r.End || r.End > size {
				t.Fatalf("parseRanges(%q) accepted %v", raw, rs)
			}
			prev = r.End
		}
		// What parses is what marshal writes back.
		back, err := parseRanges(rs.marshal(), size)
		if err != nil || len(back) != len(rs) {
			t.Fatalf("round trip of %v = %v, %v", rs, back, err)
		}
		for i := range rs {
			if back[i] != rs[i] {
				t.Fatalf("round trip of %v = %v", rs, back)
			}
		}
	})
}

// TestRangesModel checks the set against a bitmap under random additions.
func TestRangesModel(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for round := range 200 {
		const size = 200
		var s ranges
		var bits [size]bool
		for range rng.IntN(12) {
			a := rng.Int64N(size)
			b := a + rng.Int64N(size-a+1)
			s.add(Range{a, b})
			for i := a; i < b; i++ {
				bits[i] = true
			}
		}
		var total int64
		for i := range int64(size) {
			if bits[i] {
				total++
			}
			if s.contains(i, i+1) != bits[i] {
				t.Fatalf("round %d: contains(%d) = %v, want %v (set %v)", round, i, !bits[i], bits[i], s)
			}
		}
		if s.total() != total {
			t.Fatalf("round %d: total %d, want %d", round, s.total(), total)
		}
		for i := 1; i < len(s); i++ {
			if s[i].Start <= s[i-1].End {
				t.Fatalf("round %d: ranges not apart: %v", round, s)
			}
		}
		a := rng.Int64N(size)
		b := a + rng.Int64N(size-a+1)
		var miss int64
		for _, r := range s.missing(a, b) {
			for i := r.Start; i < r.End; i++ {
				if bits[i] {
					t.Fatalf("round %d: missing(%d, %d) has present byte %d", round, a, b, i)
				}
				miss++
			}
		}
		var want int64
		for i := a; i < b; i++ {
			if !bits[i] {
				want++
			}
		}
		if miss != want {
			t.Fatalf("round %d: missing(%d, %d) covers %d bytes, want %d", round, a, b, miss, want)
		}
		if bytes.Count(s.marshal(), []byte{'\n'}) != len(s) {
			t.Fatalf("marshal of %v has the wrong line count", s)
		}
	}
}
