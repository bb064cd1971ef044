package mirror

import (
	"net/textproto"
	"strconv"
	"strings"

	"github.com/thaw-dev/thaw/puller/store"
)

// wantedRanges reads a Range header the way net/http's ServeContent does,
// for a blob of size bytes, and returns the byte ranges it will serve, so
// that their fetch can start at once and in parallel (ServeContent itself
// reads them one after the other). It returns nil where ServeContent would
// not answer 206: no header, a malformed or unsatisfiable one. Only a hint:
// ServeContent still parses the header and answers.
func wantedRanges(header string, size int64) []store.Range {
	const prefix = "bytes="
	if header == "" || !strings.HasPrefix(header, prefix) {
		return nil
	}
	var out []store.Range
	var sum int64
	for _, spec := range strings.Split(header[len(prefix):], ",") {
		spec = textproto.TrimString(spec)
		if spec == "" {
			continue
		}
		first, last, ok := strings.Cut(spec, "-")
		if !ok {
			return nil
		}
		first, last = textproto.TrimString(first), textproto.TrimString(last)
		var r store.Range
		if first == "" {
			// -N: the last N bytes.
			if last == "" || last[0] == '-' {
				return nil
			}
			n, err := strconv.ParseInt(last, 10, 64)
			if err != nil || n < 0 {
				return nil
			}
			r = store.Range{Start: size - min(n, size), End: size}
		} else {
			start, err := strconv.ParseInt(first, 10, 64)
			if err != nil || start < 0 {
				return nil
			}
			if start >= size {
				continue // does not overlap; others may
			}
			end := size
			if last != "" {
				l, err := strconv.ParseInt(last, 10, 64)
				if err != nil || start > l {
					return nil
				}
				end = min(l, size-1) + 1
			}
			r = store.Range{Start: start, End: end}
		}
		if r.Len() == 0 {
			continue
		}
		out = append(out, r)
		sum += r.Len()
	}
	if sum > size {
		return nil // ServeContent then sends the whole blob
	}
	return out
}
