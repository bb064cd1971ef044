package upstream

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"syscall"

	"github.com/google/go-containerregistry/pkg/v1/remote/transport"

	"github.com/thaw-dev/thaw/puller"
)

// ErrClosed is returned by every call made after Registry.Close, and by calls
// whose transport setup Close interrupted.
var ErrClosed = errors.New("upstream registry client closed")

// fail wraps err with what was asked, its classification and, for mistakes
// an operator can fix, what to do about it.
func fail(ctx context.Context, host, what string, err error) error {
	err = classify(ctx, err)
	if h := hint(host, err); h != "" {
		return fmt.Errorf("%s: %w (%s)", what, err, h)
	}
	return fmt.Errorf("%s: %w", what, err)
}

func hint(host string, err error) string {
	var certErr *tls.CertificateVerificationError
	switch {
	case errors.Is(err, puller.ErrUnauthorized):
		return "check the credentials for " + host + " in thaw's registry auths or docker's config.json"
	case errors.As(err, &certErr):
		return "if " + host + " uses a certificate this node cannot verify, list it as an insecure registry"
	case errors.Is(err, http.ErrSchemeMismatch):
		return "if " + host + " serves plain HTTP, list it as an insecure registry"
	}
	return ""
}

// classify wraps err with the puller sentinel it amounts to, if any, keeping
// err (and so the registry's own message) in the chain: "upstream
// unavailable: Get ...: connection refused" matches both puller.ErrUnavailable
// and the *url.Error. ctx is the caller's: when the caller gave up, the error
// is its cancellation, not the origin's fault.
func classify(ctx context.Context, err error) error {
	if err == nil || errors.Is(err, ErrClosed) || hasSentinel(err) {
		return err
	}
	var terr *transport.Error
	if errors.As(err, &terr) {
		if s := statusSentinel(terr); s != nil {
			return fmt.Errorf("%w: %w", s, err)
		}
	}
	if cerr := ctx.Err(); cerr != nil && !errors.Is(err, cerr) {
		// The transport may report the cancellation as something else, e.g.
		// "use of closed network connection" from a body read.
		err = fmt.Errorf("%w: %w", cerr, err)
	}
	switch {
	case errors.Is(err, context.Canceled):
		return err
	case errors.Is(err, context.DeadlineExceeded), isConnError(err):
		// A caller's deadline expiring means the origin was too slow for it.
		return fmt.Errorf("%w: %w", puller.ErrUnavailable, err)
	}
	return err
}

func hasSentinel(err error) bool {
	for _, s := range []error{
		puller.ErrNotFound, puller.ErrUnauthorized, puller.ErrUnavailable,
		puller.ErrDigestMismatch, puller.ErrSizeMismatch, puller.ErrTooLarge,
	} {
		if errors.Is(err, s) {
			return true
		}
	}
	return false
}

// statusSentinel classifies an origin's error answer by status first, as
// that is what every registry sends (HEAD answers carry no body), then by the
// distribution error codes in its body.
func statusSentinel(terr *transport.Error) error {
	switch c := terr.StatusCode; {
	case c == http.StatusNotFound:
		return puller.ErrNotFound
	case c == http.StatusUnauthorized, c == http.StatusForbidden:
		return puller.ErrUnauthorized
	case c == http.StatusTooManyRequests, c == http.StatusRequestTimeout, c >= 500 && c <= 599:
		return puller.ErrUnavailable
	}
	for _, d := range terr.Errors {
		switch d.Code {
		case transport.NameUnknownErrorCode, transport.ManifestUnknownErrorCode, transport.BlobUnknownErrorCode:
			return puller.ErrNotFound
		case transport.UnauthorizedErrorCode, transport.DeniedErrorCode:
			return puller.ErrUnauthorized
		case transport.TooManyRequestsErrorCode, transport.UnavailableErrorCode:
			return puller.ErrUnavailable
		}
	}
	return nil
}

// isConnError reports whether err is the network failing rather than the
// origin answering: refused or reset connections, DNS, TLS, timeouts, a
// connection closed mid-body. Everything net/http's client returns is a
// *url.Error, so that covers failures of the dial, TLS and redirects alike.
func isConnError(err error) bool {
	var (
		uerr *url.Error
		nerr net.Error
	)
	return errors.As(err, &uerr) || errors.As(err, &nerr) ||
		errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.EPIPE) || errors.Is(err, net.ErrClosed)
}

func isTimeout(err error) bool {
	if errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	var nerr net.Error
	return errors.As(err, &nerr) && nerr.Timeout()
}

func isServerError(err error) bool {
	var terr *transport.Error
	if !errors.As(err, &terr) {
		return false
	}
	if c := terr.StatusCode; c == http.StatusTooManyRequests || c >= 500 && c <= 599 {
		return true
	}
	for _, d := range terr.Errors {
		if d.Code == transport.TooManyRequestsErrorCode || d.Code == transport.UnavailableErrorCode {
			return true
		}
	}
	return false
}

// Kind returns a short, fixed label for err, for metrics: "not_found",
// "unauthorized", "timeout", "connection" (could not reach the origin or lost
// it mid-body), "server" (a 5xx or 429 answer), "digest_mismatch",
// "too_large", "canceled" (the caller gave up, or the Registry was closed) or
// "other". Kind(nil) is "".
func Kind(err error) string {
	switch {
	case err == nil:
		return ""
	case errors.Is(err, puller.ErrDigestMismatch):
		return "digest_mismatch"
	case errors.Is(err, puller.ErrTooLarge):
		return "too_large"
	case errors.Is(err, puller.ErrNotFound):
		return "not_found"
	case errors.Is(err, puller.ErrUnauthorized):
		return "unauthorized"
	case errors.Is(err, context.Canceled), errors.Is(err, ErrClosed):
		return "canceled"
	case isTimeout(err):
		return "timeout"
	case isServerError(err):
		return "server"
	case errors.Is(err, puller.ErrUnavailable), isConnError(err):
		return "connection"
	}
	return "other"
}
