package store

import (
	"bytes"
	"fmt"
	"slices"
	"strconv"
)

// Range is the half-open byte range [Start, End) of a blob.
type Range struct {
	Start, End int64
}

// Len is the number of bytes in r.
func (r Range) Len() int64 { return r.End - r.Start }

// Subtract returns the parts of rs (sorted and disjoint) that are in none of
// busy (in any order), sorted.
func Subtract(rs []Range, busy []Range) []Range {
	for _, b := range busy {
		var out []Range
		for _, r := range rs {
			if b.End <= r.Start || b.Start >= r.End {
				out = append(out, r)
				continue
			}
			if r.Start < b.Start {
				out = append(out, Range{r.Start, b.Start})
			}
			if b.End < r.End {
				out = append(out, Range{b.End, r.End})
			}
		}
		rs = out
	}
	return rs
}

// ranges is a set of bytes as sorted, disjoint, non-adjacent ranges. The zero
// value is empty. It is not safe for concurrent use.
type ranges []Range

// add inserts r, merging it with the ranges it touches.
func (s *ranges) add(r Range) {
	if r.End <= r.Start {
		return
	}
	rs := *s
	// i: first range ending at or after r.Start; j: first starting after r.End.
	i, _ := slices.BinarySearchFunc(rs, r.Start, func(x Range, t int64) int { return cmpInt(x.End, t) })
	j, _ := slices.BinarySearchFunc(rs, r.End, func(x Range, t int64) int {
		if x.Start <= t {
			return -1
		}
		return 1
	})
	if i < j {
		r.Start = min(r.Start, rs[i].Start)
		r.End = max(r.End, rs[j-1].End)
	}
	*s = slices.Replace(rs, i, j, r)
}

func cmpInt(a, b int64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// contains reports whether every byte of [start, end) is in the set.
func (s ranges) contains(start, end int64) bool {
	if end <= start {
		return true
	}
	i := s.index(start)
	return i < len(s) && s[i].Start <= start && s[i].End >= end
}

// index is the first range that ends after off.
func (s ranges) index(off int64) int {
	i, _ := slices.BinarySearchFunc(s, off, func(x Range, t int64) int {
		if x.End <= t {
			return -1
		}
		return 1
	})
	return i
}

// runEnd returns the end of the range holding off, or off if none does.
func (s ranges) runEnd(off int64) int64 {
	i := s.index(off)
	if i < len(s) && s[i].Start <= off {
		return s[i].End
	}
	return off
}

// missing returns the parts of [start, end) that are not in the set.
func (s ranges) missing(start, end int64) []Range {
	var out []Range
	for i := s.index(start); start < end; i++ {
		if i >= len(s) || s[i].Start >= end {
			out = append(out, Range{start, end})
			break
		}
		if s[i].Start > start {
			out = append(out, Range{start, s[i].Start})
		}
		start = s[i].End
	}
	return out
}

// total is the number of bytes in the set.
func (s ranges) total() int64 {
	var n int64
	for _, r := range s {
		n += r.Len()
	}
	return n
}

// marshal encodes the set as the content of a partial blob's ranges file:
// one "start-end" line per range, decimal, half-open.
func (s ranges) marshal() []byte {
	var b []byte
	for _, r := range s {
		b = strconv.AppendInt(b, r.Start, 10)
		b = append(b, '-')
		b = strconv.AppendInt(b, r.End, 10)
		b = append(b, '\n')
	}
	return b
}

// parseRanges decodes a ranges file written by marshal for a blob of size
// bytes. Anything else (a torn or edited file) is an error: the caller then
// trusts none of it.
func parseRanges(raw []byte, size int64) (ranges, error) {
	var s ranges
	var prevEnd int64 = -1
	lines := bytes.Split(raw, []byte{'\n'})
	for n, line := range lines {
		if len(line) == 0 {
			if n == len(lines)-1 {
				break // the final newline
			}
			return nil, fmt.Errorf("ranges file line %d is empty", n+1)
		}
		a, b, ok := bytes.Cut(line, []byte{'-'})
		if !ok {
			return nil, fmt.Errorf("ranges file line %d %q: want start-end", n+1, line)
		}
		start, err1 := parseCount(a)
		end, err2 := parseCount(b)
		switch {
		case err1 != nil || err2 != nil:
			return nil, fmt.Errorf("ranges file line %d %q: want two decimal byte offsets", n+1, line)
		case start >= end || end > size:
			return nil, fmt.Errorf("ranges file line %d %q: not a non-empty range within the blob's %d bytes", n+1, line, size)
		case start <= prevEnd:
			return nil, fmt.Errorf("ranges file line %d %q: ranges must be sorted and apart", n+1, line)
		}
		s = append(s, Range{start, end})
		prevEnd = end
	}
	return s, nil
}

// parseCount parses a non-negative decimal without sign or spaces.
func parseCount(b []byte) (int64, error) {
	if len(b) == 0 || len(b) > 19 {
		return 0, fmt.Errorf("%q is not a byte offset", b)
	}
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, fmt.Errorf("%q is not a byte offset", b)
		}
	}
	return strconv.ParseInt(string(b), 10, 64)
}
