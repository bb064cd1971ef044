package mirror

import (
	"errors"
	"net/url"
	"testing"
)

func TestParseRequest(t *testing.T) {
	const dgst = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
	tests := []struct {
		path, ns string
		kind     Kind
		repo     string
		tag      string
		err      error
	}{
		{path: "/v2/", kind: KindBase},
		{path: "/v2", kind: KindBase},
		{path: "/v2/library/alpine/manifests/3.20", ns: "docker.io", kind: KindManifest, repo: "index.docker.io/library/alpine", tag: "3.20"},
		{path: "/v2/team/app/manifests/" + dgst, ns: "registry.example:5000", kind: KindManifest, repo: "registry.example:5000/team/app"},
		{path: "/v2/a/b/c/blobs/" + dgst, ns: "r.example", kind: KindBlob, repo: "r.example/a/b/c"},
		{path: "/v2/app/manifests/latest", kind: KindManifest, repo: "default.example/app", tag: "latest"},
		// a repository may itself contain "blobs" or "manifests" path parts
		{path: "/v2/manifests/blobs/" + dgst, ns: "r.example", kind: KindBlob, repo: "r.example/manifests"},
		{path: "/v1/app/manifests/latest", err: errNotFound},
		{path: "/v2/app/tags/list", err: errNotFound},
		{path: "/v2/_catalog", err: errNotFound},
		{path: "/v2/App/manifests/latest", err: errNameInvalid},
		{path: "/v2/a//b/manifests/latest", err: errNameInvalid},
		{path: "/v2/app/manifests/-bad", err: errTagInvalid},
		{path: "/v2/app/blobs/sha256:1234", err: errDigestInvalid},
		{path: "/v2/app/blobs/latest", err: errDigestInvalid},
		{path: "/v2/app/blobs/md5:d41d8cd98f00b204e9800998ecf8427e", err: errDigestInvalid},
		{path: "/v2/app/manifests/sha512:abc", err: errDigestInvalid},
		{path: "/v2/app/manifests/latest", ns: "bad host/x", err: errNSInvalid},
		{path: "/v2/app/manifests/latest", ns: "user@host", err: errNSInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.path+"?ns="+tt.ns, func(t *testing.T) {
			q := url.Values{}
			if tt.ns != "" {
				q.Set("ns", tt.ns)
			}
			req, err := ParseRequest(tt.path, q, "default.example")
			if tt.err != nil {
				if !errors.Is(err, tt.err) {
					t.Fatalf("err = %v, want %v", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if req.Kind != tt.kind || req.Tag != tt.tag {
				t.Fatalf("got kind %q tag %q, want %q %q", req.Kind, req.Tag, tt.kind, tt.tag)
			}
			if tt.repo != "" && req.Repo.Name() != tt.repo {
				t.Fatalf("repo = %q, want %q", req.Repo.Name(), tt.repo)
			}
			if tt.kind == KindBlob && req.Digest.String() != dgst {
				t.Fatalf("digest = %s", req.Digest)
			}
		})
	}
}

// FuzzParseRequest: any path and ns either parse into a request whose parts
// are valid, or fail with one of the parser's errors; never a panic.
func FuzzParseRequest(f *testing.F) {
	for _, s := range []string{
		"/v2/", "/v2/library/alpine/manifests/latest", "/v2/a/b/blobs/sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
		"/v2//manifests/", "/v2/a/manifests/sha256:", "/v2/a/blobs/", "/v2/%2e%2e/blobs/x",
	} {
		f.Add(s, "docker.io")
		f.Add(s, "")
	}
	f.Fuzz(func(t *testing.T, path, ns string) {
		q := url.Values{}
		if ns != "" {
			q.Set("ns", ns)
		}
		req, err := ParseRequest(path, q, "default.example")
		if err != nil {
			for _, known := range []error{errNotFound, errNameInvalid, errDigestInvalid, errTagInvalid, errNSInvalid} {
				if errors.Is(err, known) {
					return
				}
			}
			t.Fatalf("unclassified error %v", err)
		}
		switch req.Kind {
		case KindBase:
		case KindManifest, KindBlob:
			if req.Tag == "" && req.Digest.Algorithm != "sha256" {
				t.Fatalf("request without tag or sha256 digest: %+v", req)
			}
			// The reference must round-trip through the name parser.
			_ = req.Reference().Name()
		default:
			t.Fatalf("unknown kind %q", req.Kind)
		}
	})
}
