package upstream

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/thaw-dev/thaw/puller"
)

// manifestAccept lists the manifest media types the mirror serves to
// containerd; registries pick the stored manifest's own type among them.
var manifestAccept = strings.Join([]string{
	string(types.DockerManifestSchema2),
	string(types.DockerManifestList),
	string(types.OCIManifestSchema1),
	string(types.OCIImageIndex),
}, ", ")

func manifestHeader() http.Header {
	return http.Header{
		"Accept": {manifestAccept},
		// Setting it stops net/http from asking for gzip and transparently
		// decompressing, which would change the bytes we hash.
		"Accept-Encoding": {"identity"},
	}
}

// Resolve asks the origin which manifest ref (a tag or a digest) points at,
// with a HEAD request. When the answer lacks the digest, the size or a
// specific media type, it falls back to GET and hashes the body.
func (r *Registry) Resolve(ctx context.Context, ref name.Reference) (puller.Descriptor, error) {
	what := fmt.Sprintf("resolve %s", ref)
	repo := r.withInsecure(ref.Context())
	resp, err := r.do(ctx, repo, http.MethodHead, "/manifests/"+ref.Identifier(), manifestHeader())
	if err != nil {
		return puller.Descriptor{}, fail(ctx, repo.RegistryStr(), what, err)
	}
	switch resp.StatusCode {
	case http.StatusOK:
		resp.Body.Close()
		desc, ok := descriptorFromHeaders(resp.Header, resp.ContentLength)
		if d, isDigest := ref.(name.Digest); ok && isDigest && desc.Digest.String() != d.DigestStr() {
			ok = false // let GET check the bytes themselves
		}
		if ok {
			if desc.Size > puller.MaxManifestSize {
				return puller.Descriptor{}, fmt.Errorf("%s: %w: manifest is %d bytes, over the %d byte limit",
					what, puller.ErrTooLarge, desc.Size, puller.MaxManifestSize)
			}
			return desc, nil
		}
	case http.StatusMethodNotAllowed, http.StatusNotImplemented:
		resp.Body.Close() // some registries only answer GET
	default:
		return puller.Descriptor{}, fail(ctx, repo.RegistryStr(), what, errorAnswer(resp))
	}

	body, mediaType, err := r.getManifest(ctx, repo, ref.Identifier())
	if err != nil {
		return puller.Descriptor{}, fail(ctx, repo.RegistryStr(), what, err)
	}
	algorithm := "sha256"
	if d, ok := ref.(name.Digest); ok {
		want, err := v1.NewHash(d.DigestStr())
		if err != nil {
			return puller.Descriptor{}, fmt.Errorf("%s: %w", what, err)
		}
		if err := verify(body, want); err != nil {
			return puller.Descriptor{}, fmt.Errorf("%s: %w", what, err)
		}
		algorithm = want.Algorithm
	}
	dgst, err := digestOf(algorithm, body)
	if err != nil {
		return puller.Descriptor{}, fmt.Errorf("%s: %w", what, err)
	}
	return puller.Descriptor{Digest: dgst, MediaType: mediaType, Size: int64(len(body))}, nil
}

// descriptorFromHeaders reads a HEAD answer; ok is false when something the
// mirror needs is missing or unusable.
func descriptorFromHeaders(h http.Header, contentLength int64) (desc puller.Descriptor, ok bool) {
	dgst, err := v1.NewHash(strings.TrimSpace(h.Get("Docker-Content-Digest")))
	if err != nil {
		return puller.Descriptor{}, false
	}
	mediaType := cleanMediaType(h.Get("Content-Type"))
	if mediaType == "" || isGenericMediaType(mediaType) || contentLength < 0 {
		return puller.Descriptor{}, false
	}
	return puller.Descriptor{Digest: dgst, MediaType: mediaType, Size: contentLength}, true
}

// Manifest returns the manifest with digest dgst, verified, and its media
// type. Manifests over puller.MaxManifestSize fail with puller.ErrTooLarge
// without being read in full.
func (r *Registry) Manifest(ctx context.Context, repo name.Repository, dgst v1.Hash) ([]byte, string, error) {
	what := fmt.Sprintf("fetch manifest %s from %s", dgst, repo)
	repo = r.withInsecure(repo)
	body, mediaType, err := r.getManifest(ctx, repo, dgst.String())
	if err != nil {
		return nil, "", fail(ctx, repo.RegistryStr(), what, err)
	}
	if err := verify(body, dgst); err != nil {
		return nil, "", fmt.Errorf("%s: %w", what, err)
	}
	return body, mediaType, nil
}

// getManifest GETs a manifest by tag or digest, bounded by MaxManifestSize.
func (r *Registry) getManifest(ctx context.Context, repo name.Repository, identifier string) ([]byte, string, error) {
	resp, err := r.do(ctx, repo, http.MethodGet, "/manifests/"+identifier, manifestHeader())
	if err != nil {
		return nil, "", err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, "", errorAnswer(resp)
	}
	defer resp.Body.Close()
	if resp.ContentLength > puller.MaxManifestSize {
		return nil, "", fmt.Errorf("%w: manifest is %d bytes, over the %d byte limit",
			puller.ErrTooLarge, resp.ContentLength, puller.MaxManifestSize)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, puller.MaxManifestSize+1))
	if err != nil {
		return nil, "", fmt.Errorf("read manifest body: %w", err)
	}
	if len(body) > puller.MaxManifestSize {
		return nil, "", fmt.Errorf("%w: manifest is over the %d byte limit", puller.ErrTooLarge, puller.MaxManifestSize)
	}
	return body, manifestMediaType(resp.Header.Get("Content-Type"), body), nil
}

func digestOf(algorithm string, body []byte) (v1.Hash, error) {
	h, err := v1.Hasher(algorithm)
	if err != nil {
		return v1.Hash{}, err
	}
	h.Write(body)
	return v1.Hash{Algorithm: algorithm, Hex: hex.EncodeToString(h.Sum(nil))}, nil
}

func verify(body []byte, want v1.Hash) error {
	got, err := digestOf(want.Algorithm, body)
	if err != nil {
		return err
	}
	if got != want {
		return fmt.Errorf("%w: the origin's bytes hash to %s", puller.ErrDigestMismatch, got)
	}
	return nil
}

// manifestMediaType trusts a specific Content-Type, and otherwise looks at
// the manifest itself.
func manifestMediaType(contentType string, body []byte) string {
	ct := cleanMediaType(contentType)
	if ct != "" && !isGenericMediaType(ct) {
		return ct
	}
	if mt := detectMediaType(body); mt != "" {
		return mt
	}
	if ct != "" {
		return ct
	}
	return "application/octet-stream"
}

// cleanMediaType returns the media type of a Content-Type value without
// parameters, or "" when it is not a valid media type. What it returns is
// safe to send on as a header.
func cleanMediaType(s string) string {
	if s == "" || len(s) > 255 {
		return ""
	}
	mt, _, err := mime.ParseMediaType(s)
	if err != nil || !strings.Contains(mt, "/") {
		return ""
	}
	return mt
}

func isGenericMediaType(mt string) bool {
	switch mt {
	case "application/json", "text/plain", "application/octet-stream", "binary/octet-stream":
		return true
	}
	return false
}

// detectMediaType tells a manifest's media type from its JSON: the mediaType
// field when it has a specific one, else its shape (OCI manifests and
// indexes may omit the field). It returns "" for anything else.
func detectMediaType(body []byte) string {
	var m struct {
		SchemaVersion json.RawMessage `json:"schemaVersion"`
		MediaType     json.RawMessage `json:"mediaType"`
		Manifests     json.RawMessage `json:"manifests"`
		Config        json.RawMessage `json:"config"`
		Layers        json.RawMessage `json:"layers"`
		FSLayers      json.RawMessage `json:"fsLayers"`
		Signatures    json.RawMessage `json:"signatures"`
	}
	if err := json.Unmarshal(body, &m); err != nil {
		return ""
	}
	var field string
	if json.Unmarshal(m.MediaType, &field) == nil {
		if mt := cleanMediaType(field); mt != "" && !isGenericMediaType(mt) {
			return mt
		}
	}
	switch {
	case present(m.Manifests):
		return string(types.OCIImageIndex)
	case present(m.Config), present(m.Layers):
		return string(types.OCIManifestSchema1)
	case present(m.FSLayers), bytes.Equal(bytes.TrimSpace(m.SchemaVersion), []byte("1")):
		if present(m.Signatures) {
			return string(types.DockerManifestSchema1Signed)
		}
		return string(types.DockerManifestSchema1)
	}
	return ""
}

func present(raw json.RawMessage) bool {
	raw = bytes.TrimSpace(raw)
	return len(raw) > 0 && !bytes.Equal(raw, []byte("null"))
}
