package puller

import (
	"context"
	"errors"
	"net"
	"syscall"
)

// ErrorKind labels an error for metrics: not_found, unauthorized, timeout,
// connection, server, digest_mismatch, size_mismatch, too_large, quota,
// canceled or other.
func ErrorKind(err error) string {
	var netErr net.Error
	switch {
	case err == nil:
		return ""
	case errors.Is(err, ErrDigestMismatch):
		return "digest_mismatch"
	case errors.Is(err, ErrSizeMismatch):
		return "size_mismatch"
	case errors.Is(err, ErrTooLarge):
		return "too_large"
	case errors.Is(err, ErrQuota):
		return "quota"
	case errors.Is(err, ErrNotFound):
		return "not_found"
	case errors.Is(err, ErrUnauthorized):
		return "unauthorized"
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &netErr) && netErr.Timeout():
		return "timeout"
	case errors.Is(err, context.Canceled):
		return "canceled"
	case errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.ECONNRESET), errors.As(err, new(*net.OpError)), errors.As(err, new(*net.DNSError)):
		return "connection"
	case errors.Is(err, ErrUnavailable):
		return "server"
	}
	return "other"
}
