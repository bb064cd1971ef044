// Package upstream is the node mirror's client to origin registries: containerd
// pulls through the mirror, and the mirror pulls from the origin with this
// package. Registry implements puller.ManifestSource (Resolve, Manifest) and
// puller.Source (FetchBlob) and puller.RangeSource (BlobSize, FetchRange) on
// top of go-containerregistry's transport.
//
// It owns everything about talking to an origin registry:
//
//   - authentication: static credentials from Config.Auths, then a keychain
//     (docker's config.json and credential helpers by default), turned into
//     basic or bearer-token auth by go-containerregistry's transport;
//   - schemes: HTTPS, with plain HTTP or unverified TLS only for the hosts listed
//     in Config.Insecure (and loopback, as go-containerregistry allows);
//   - timeouts: dialing, the TLS handshake and waiting for response headers are
//     bounded; a streaming body is not, so callers bound it with their context;
//   - one authenticated transport per repository, cached so the registry is
//     pinged (and a token fetched) once per repository, not once per request;
//   - error classification: every error wraps puller.ErrNotFound,
//     puller.ErrUnauthorized or puller.ErrUnavailable when one applies, keeps
//     the registry's own message, and Kind gives a short label for metrics;
//   - checks on what comes off the network: manifests are capped at
//     puller.MaxManifestSize and verified against their digest, Content-Range
//     answers are checked against the offset asked for.
//
// It does not store or cache content (see puller/store and puller/fetch), does
// not verify blob bytes (the caller hashes them as it stores them), does not
// cache tag resolutions (see puller/catalog), and does not retry: a failed call
// returns at once with an error the caller can act on (serve stale, resume from
// an offset, or let containerd fall back to the origin).
package upstream
