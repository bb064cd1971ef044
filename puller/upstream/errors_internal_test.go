package upstream

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"syscall"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/remote/transport"

	"github.com/thaw-dev/thaw/puller"
)

func TestClassify(t *testing.T) {
	urlErr := func(err error) error { return &url.Error{Op: "Get", URL: "https://registry.example/v2/", Err: err} }
	status := func(code int, codes ...transport.ErrorCode) error {
		e := &transport.Error{StatusCode: code}
		for _, c := range codes {
			e.Errors = append(e.Errors, transport.Diagnostic{Code: c, Message: "says the registry"})
		}
		return e
	}
	canceled, cancel := context.WithCancel(context.Background())
	cancel()

	tests := []struct {
		name     string
		ctx      context.Context
		err      error
		sentinel error // nil: none of the puller sentinels
		kind     string
	}{
		{"404", nil, status(http.StatusNotFound), puller.ErrNotFound, "not_found"},
		{"name unknown", nil, status(http.StatusBadRequest, transport.NameUnknownErrorCode), puller.ErrNotFound, "not_found"},
		{"manifest unknown", nil, status(http.StatusBadRequest, transport.ManifestUnknownErrorCode), puller.ErrNotFound, "not_found"},
		{"blob unknown", nil, status(http.StatusBadRequest, transport.BlobUnknownErrorCode), puller.ErrNotFound, "not_found"},
		{"401", nil, status(http.StatusUnauthorized), puller.ErrUnauthorized, "unauthorized"},
		{"403", nil, status(http.StatusForbidden), puller.ErrUnauthorized, "unauthorized"},
		{"denied", nil, status(http.StatusBadRequest, transport.DeniedErrorCode), puller.ErrUnauthorized, "unauthorized"},
		{"token server 401 via url.Error", nil, urlErr(status(http.StatusUnauthorized)), puller.ErrUnauthorized, "unauthorized"},
		{"500", nil, status(http.StatusInternalServerError), puller.ErrUnavailable, "server"},
		{"503", nil, status(http.StatusServiceUnavailable), puller.ErrUnavailable, "server"},
		{"429", nil, status(http.StatusTooManyRequests), puller.ErrUnavailable, "server"},
		{"toomanyrequests code", nil, status(http.StatusBadRequest, transport.TooManyRequestsErrorCode), puller.ErrUnavailable, "server"},
		{"400 unknown code", nil, status(http.StatusBadRequest, transport.ManifestInvalidErrorCode), nil, "other"},
		{"connection refused", nil, urlErr(&net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}), puller.ErrUnavailable, "connection"},
		{"dns", nil, urlErr(&net.OpError{Op: "dial", Net: "tcp", Err: &net.DNSError{Err: "no such host", Name: "registry.invalid", IsNotFound: true}}), puller.ErrUnavailable, "connection"},
		{"dial timeout", nil, urlErr(&net.OpError{Op: "dial", Net: "tcp", Err: os.ErrDeadlineExceeded}), puller.ErrUnavailable, "timeout"},
		{"reset mid-body", nil, fmt.Errorf("read: %w", syscall.ECONNRESET), puller.ErrUnavailable, "connection"},
		{"cut short", nil, io.ErrUnexpectedEOF, puller.ErrUnavailable, "connection"},
		{"caller deadline", nil, urlErr(context.DeadlineExceeded), puller.ErrUnavailable, "timeout"},
		{"caller canceled", canceled, urlErr(context.Canceled), nil, "canceled"},
		{"caller canceled, transport says otherwise", canceled, errors.New("use of closed network connection"), nil, "canceled"},
		{"404 despite cancel", canceled, status(http.StatusNotFound), puller.ErrNotFound, "not_found"},
		{"closed", nil, ErrClosed, nil, "canceled"},
		{"already classified", nil, fmt.Errorf("x: %w", puller.ErrDigestMismatch), puller.ErrDigestMismatch, "digest_mismatch"},
		{"too large", nil, fmt.Errorf("x: %w", puller.ErrTooLarge), puller.ErrTooLarge, "too_large"},
		{"other", nil, errors.New("malformed answer"), nil, "other"},
	}
	sentinels := []error{puller.ErrNotFound, puller.ErrUnauthorized, puller.ErrUnavailable, puller.ErrDigestMismatch, puller.ErrTooLarge}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := tt.ctx
			if ctx == nil {
				ctx = context.Background()
			}
			got := classify(ctx, tt.err)
			if !errors.Is(got, tt.err) {
				t.Errorf("classify dropped the cause: %v", got)
			}
			for _, s := range sentinels {
				if want := s == tt.sentinel; errors.Is(got, s) != want {
					t.Errorf("errors.Is(%v, %v) = %v, want %v", got, s, !want, want)
				}
			}
			if k := Kind(got); k != tt.kind {
				t.Errorf("Kind(%v) = %q, want %q", got, k, tt.kind)
			}
		})
	}
	if Kind(nil) != "" {
		t.Errorf("Kind(nil) = %q, want empty", Kind(nil))
	}
}
