package main

import (
	"fmt"
	"strconv"
	"strings"
)

// byteSize is a flag value for sizes: plain bytes or with a unit (KB, MB, GB,
// TB decimal; KiB, MiB, GiB, TiB binary).
type byteSize int64

var sizeUnits = []struct {
	suffix string
	factor int64
}{
	{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"TiB", 1 << 40},
	{"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"TB", 1e12}, {"B", 1},
}

func (s *byteSize) Set(v string) error {
	num, factor := strings.TrimSpace(v), int64(1)
	for _, u := range sizeUnits {
		if n, ok := strings.CutSuffix(num, u.suffix); ok {
			num, factor = strings.TrimSpace(n), u.factor
			break
		}
	}
	f, err := strconv.ParseFloat(num, 64)
	if err != nil || !(f >= 0 && f*float64(factor) < 1<<63) { // also NaN, Inf, overflow
		return fmt.Errorf("size %q: want a number of bytes, optionally with KB, MB, GB, TB, KiB, MiB, GiB or TiB", v)
	}
	*s = byteSize(f * float64(factor))
	return nil
}

func (s *byteSize) String() string { return strconv.FormatInt(int64(*s), 10) }
func (s *byteSize) Type() string   { return "size" }
