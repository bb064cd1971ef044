package upstream

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
)

// Config tunes a Registry. Start from DefaultConfig and change what you need;
// New rejects a Config that does not pass Validate.
type Config struct {
	// Insecure lists registry hosts, "host" or "host:port" exactly as they
	// appear in image references, that may be reached over plain HTTP or over
	// TLS without verifying the certificate, like Docker's
	// insecure-registries. HTTPS is still tried first. localhost, 127.0.0.1,
	// ::1 and RFC 1918 addresses already fall back to plain HTTP (as in
	// go-containerregistry) but keep verifying certificates unless listed.
	Insecure []string

	// Auths holds static credentials per registry host ("host[:port]",
	// "docker.io" is the same as "index.docker.io"). They take precedence over
	// Keychain.
	Auths map[string]authn.AuthConfig

	// Keychain resolves credentials for hosts not in Auths. DefaultConfig sets
	// authn.DefaultKeychain (docker's config.json and its credential helpers);
	// nil means anonymous access for every host not in Auths.
	Keychain authn.Keychain

	// DialTimeout bounds establishing a TCP connection.
	DialTimeout time.Duration

	// ResponseHeaderTimeout bounds the wait for a response's headers after the
	// request is sent, and also the TLS handshake: both are the origin not
	// answering. It does not bound reading a body.
	ResponseHeaderTimeout time.Duration

	// IdleConnTimeout is how long an idle keep-alive connection is kept; 0
	// keeps it until the origin closes it.
	IdleConnTimeout time.Duration

	// MaxIdleConnsPerHost is how many idle connections are kept per origin
	// host; 0 means net/http's default (2), too few for parallel layer pulls.
	MaxIdleConnsPerHost int

	// UserAgent is sent on every request, followed by go-containerregistry's
	// own version.
	UserAgent string
}

// ErrInvalidConfig is wrapped by every error Validate returns.
var ErrInvalidConfig = errors.New("invalid upstream config")

// DefaultConfig returns the settings a node uses unless told otherwise.
func DefaultConfig() Config {
	return Config{
		Keychain:              authn.DefaultKeychain,
		DialTimeout:           3 * time.Second,
		ResponseHeaderTimeout: 10 * time.Second,
		IdleConnTimeout:       90 * time.Second,
		MaxIdleConnsPerHost:   16,
		UserAgent:             "thaw",
	}
}

// Validate reports every problem with c, each wrapping ErrInvalidConfig.
func (c Config) Validate() error {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("%w: %s", ErrInvalidConfig, fmt.Sprintf(format, args...)))
	}
	if c.DialTimeout <= 0 {
		bad("DialTimeout must be positive, got %s", c.DialTimeout)
	}
	if c.ResponseHeaderTimeout <= 0 {
		bad("ResponseHeaderTimeout must be positive, got %s", c.ResponseHeaderTimeout)
	}
	if c.IdleConnTimeout < 0 {
		bad("IdleConnTimeout must not be negative, got %s", c.IdleConnTimeout)
	}
	if c.MaxIdleConnsPerHost < 0 {
		bad("MaxIdleConnsPerHost must not be negative, got %d", c.MaxIdleConnsPerHost)
	}
	if strings.ContainsFunc(c.UserAgent, func(r rune) bool { return r < ' ' || r == 0x7f }) {
		bad("UserAgent %q contains control characters", c.UserAgent)
	}
	for _, h := range c.Insecure {
		if _, err := registryHost(h); err != nil {
			bad("Insecure: %v", err)
		}
	}
	for h := range c.Auths {
		if _, err := registryHost(h); err != nil {
			bad("Auths: %v", err)
		}
	}
	return errors.Join(errs...)
}

// registryHost normalises a configured host the way image references are
// normalised, so that "docker.io" in the config matches "index.docker.io" in
// a reference.
func registryHost(h string) (string, error) {
	if h == "" {
		return "", errors.New(`empty host; want "host" or "host:port"`)
	}
	reg, err := name.NewRegistry(h, name.StrictValidation)
	if err != nil {
		return "", fmt.Errorf(`%q is not a registry host (want "host" or "host:port", without scheme or path): %w`, h, err)
	}
	return reg.RegistryStr(), nil
}

// staticKeychain serves Config.Auths.
type staticKeychain map[string]authn.AuthConfig

var _ authn.Keychain = staticKeychain(nil)

func (k staticKeychain) Resolve(target authn.Resource) (authn.Authenticator, error) {
	cfg, ok := k[target.RegistryStr()]
	if !ok {
		return authn.Anonymous, nil
	}
	return authn.FromConfig(cfg), nil
}
