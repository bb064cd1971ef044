package mirror

import (
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// Kind is what a /v2/ request asks for.
type Kind string

const (
	KindBase     Kind = "base" // GET /v2/
	KindManifest Kind = "manifest"
	KindBlob     Kind = "blob"
)

// Request is a parsed registry API request.
type Request struct {
	Kind Kind
	// Repo is the upstream repository: ?ns (or the default registry) plus the
	// name in the path.
	Repo name.Repository
	// Tag is set for a manifest asked by tag; Digest for a blob or a manifest
	// asked by digest.
	Tag    string
	Digest v1.Hash
}

// Reference is the manifest reference the request names.
func (r Request) Reference() name.Reference {
	if r.Tag != "" {
		return r.Repo.Tag(r.Tag)
	}
	return r.Repo.Digest(r.Digest.String())
}

// Errors of request parsing; each carries the OCI error code to answer with.
var (
	errNotFound      = errors.New("unknown API path")
	errNameInvalid   = errors.New("invalid repository name")
	errDigestInvalid = errors.New("invalid digest")
	errTagInvalid    = errors.New("invalid tag")
	errNSInvalid     = errors.New("invalid ns parameter")
)

// tagPattern is the OCI distribution spec's tag grammar.
var tagPattern = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$`)

// ParseRequest parses the path and query of a registry API request.
// defaultRegistry is used when the query has no ns parameter.
func ParseRequest(path string, query url.Values, defaultRegistry string) (Request, error) {
	if path == "/v2/" || path == "/v2" {
		return Request{Kind: KindBase}, nil
	}
	rest, ok := strings.CutPrefix(path, "/v2/")
	if !ok {
		return Request{}, fmt.Errorf("%q: %w", path, errNotFound)
	}
	var kind Kind
	var repoPath, ref string
	if i := strings.LastIndex(rest, "/manifests/"); i > 0 {
		kind, repoPath, ref = KindManifest, rest[:i], rest[i+len("/manifests/"):]
	} else if i := strings.LastIndex(rest, "/blobs/"); i > 0 {
		kind, repoPath, ref = KindBlob, rest[:i], rest[i+len("/blobs/"):]
	} else {
		return Request{}, fmt.Errorf("%q: %w", path, errNotFound)
	}

	registry := defaultRegistry
	if ns := query.Get("ns"); ns != "" {
		if _, err := name.NewRegistry(ns, name.StrictValidation); err != nil || strings.ContainsAny(ns, "/?#@") {
			return Request{}, fmt.Errorf("ns %q: %w", ns, errNSInvalid)
		}
		registry = ns
	}
	repo, err := name.NewRepository(registry+"/"+repoPath, name.StrictValidation)
	if err != nil || strings.Contains(repoPath, "//") {
		return Request{}, fmt.Errorf("repository %q: %w", repoPath, errNameInvalid)
	}
	req := Request{Kind: kind, Repo: repo}
	if kind == KindManifest && !strings.Contains(ref, ":") {
		if !tagPattern.MatchString(ref) {
			return Request{}, fmt.Errorf("tag %q: %w", ref, errTagInvalid)
		}
		req.Tag = ref
		return req, nil
	}
	h, err := v1.NewHash(ref)
	if err != nil || h.Algorithm != "sha256" {
		return Request{}, fmt.Errorf("digest %q: %w", ref, errDigestInvalid)
	}
	req.Digest = h
	return req, nil
}
