package swarm

import (
	"bytes"
	"context"
	"io"

	"golang.org/x/time/rate"
)

// chunk is the unit of rate-limited copies: small enough for smooth limiting,
// large enough to keep syscalls few.
const chunk = 64 << 10

func byteReader(b []byte) io.Reader { return bytes.NewReader(b) }

// copyLimited copies src to dst, waiting on lim (nil: unlimited) for every
// chunk.
func copyLimited(ctx context.Context, dst io.Writer, src io.Reader, lim *rate.Limiter) (int64, error) {
	buf := make([]byte, chunk)
	var total int64
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if lim != nil {
				if werr := lim.WaitN(ctx, n); werr != nil {
					return total, werr
				}
			}
			m, werr := dst.Write(buf[:n])
			total += int64(m)
			if werr != nil {
				return total, werr
			}
		}
		if err == io.EOF {
			return total, nil
		}
		if err != nil {
			return total, err
		}
	}
}

// newLimiter returns a limiter of bytesPerSec, nil for unlimited.
func newLimiter(bytesPerSec int64) *rate.Limiter {
	if bytesPerSec <= 0 {
		return nil
	}
	return rate.NewLimiter(rate.Limit(bytesPerSec), chunk)
}
