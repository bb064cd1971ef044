package upstream

import (
	"fmt"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/types"
)

func TestParseContentRange(t *testing.T) {
	tests := []struct {
		in   string
		want contentRange
		ok   bool
	}{
		{"bytes 0-99/100", contentRange{0, 99, 100}, true},
		{"bytes 10-99/100", contentRange{10, 99, 100}, true},
		{"Bytes 10-99/100", contentRange{10, 99, 100}, true},
		{"bytes 10-99/*", contentRange{10, 99, -1}, true},
		{"bytes */100", contentRange{-1, -1, 100}, true},
		{"bytes  5-5/6", contentRange{5, 5, 6}, true},
		{"", contentRange{}, false},
		{"bytes */*", contentRange{}, false},
		{"items 0-1/2", contentRange{}, false},
		{"bytes 0-99", contentRange{}, false},
		{"bytes 10-9/100", contentRange{}, false},
		{"bytes 0-100/100", contentRange{}, false},
		{"bytes -1-99/100", contentRange{}, false},
		{"bytes +1-99/100", contentRange{}, false},
		{"bytes 0-99/-100", contentRange{}, false},
		{"bytes 0x0-99/100", contentRange{}, false},
		{"bytes 0-99/99999999999999999999", contentRange{}, false},
		{"bytes 0-/100", contentRange{}, false},
	}
	for _, tt := range tests {
		got, err := parseContentRange(tt.in)
		if (err == nil) != tt.ok {
			t.Errorf("parseContentRange(%q) error = %v, want ok=%v", tt.in, err, tt.ok)
			continue
		}
		if tt.ok && got != tt.want {
			t.Errorf("parseContentRange(%q) = %+v, want %+v", tt.in, got, tt.want)
		}
	}
}

func FuzzParseContentRange(f *testing.F) {
	for _, s := range []string{"bytes 0-99/100", "bytes */100", "bytes 1-2/*", "bytes 0-0/1", "bytes -/", "bytes 9223372036854775807-9223372036854775807/*"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		cr, err := parseContentRange(s)
		if err != nil {
			return
		}
		if cr.first < 0 {
			if cr.first != -1 || cr.last != -1 || cr.size < 0 {
				t.Fatalf("%q: unsatisfied range %+v without a size", s, cr)
			}
			return
		}
		if cr.last < cr.first || (cr.size >= 0 && cr.last >= cr.size) || cr.size < -1 {
			t.Fatalf("%q: inconsistent %+v", s, cr)
		}
		size := "*"
		if cr.size >= 0 {
			size = fmt.Sprint(cr.size)
		}
		again, err := parseContentRange(fmt.Sprintf("bytes %d-%d/%s", cr.first, cr.last, size))
		if err != nil || again != cr {
			t.Fatalf("%q: round trip gave %+v, %v; want %+v", s, again, err, cr)
		}
	})
}

func TestManifestMediaType(t *testing.T) {
	tests := []struct {
		name, contentType, body, want string
	}{
		{"specific content type wins", string(types.DockerManifestSchema2), `{"mediaType":"application/vnd.oci.image.manifest.v1+json"}`, string(types.DockerManifestSchema2)},
		{"parameters dropped", string(types.OCIImageIndex) + "; charset=utf-8", `{}`, string(types.OCIImageIndex)},
		{"field when generic", "application/json", `{"mediaType":"application/vnd.docker.distribution.manifest.list.v2+json","manifests":[]}`, string(types.DockerManifestList)},
		{"field when missing", "", `{"mediaType":"application/vnd.oci.image.manifest.v1+json"}`, string(types.OCIManifestSchema1)},
		{"index by shape", "text/plain", `{"schemaVersion":2,"manifests":[]}`, string(types.OCIImageIndex)},
		{"manifest by shape", "", `{"schemaVersion":2,"config":{},"layers":[]}`, string(types.OCIManifestSchema1)},
		{"generic field ignored", "", `{"mediaType":"application/json","layers":[]}`, string(types.OCIManifestSchema1)},
		{"schema1 signed", "", `{"schemaVersion":1,"fsLayers":[],"signatures":[{}]}`, string(types.DockerManifestSchema1Signed)},
		{"schema1", "", `{"schemaVersion":1,"fsLayers":[]}`, string(types.DockerManifestSchema1)},
		{"null manifests", "", `{"manifests":null,"layers":[]}`, string(types.OCIManifestSchema1)},
		{"invalid field", "", "{\"mediaType\":\"x\\r\\nEvil: 1\",\"layers\":[]}", string(types.OCIManifestSchema1)},
		{"not json keeps generic", "application/json", `nope`, "application/json"},
		{"nothing at all", "", `{}`, "application/octet-stream"},
		{"invalid content type", "not a media type", `{}`, "application/octet-stream"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := manifestMediaType(tt.contentType, []byte(tt.body)); got != tt.want {
				t.Errorf("manifestMediaType(%q, %s) = %q, want %q", tt.contentType, tt.body, got, tt.want)
			}
		})
	}
}

func FuzzManifestMediaType(f *testing.F) {
	f.Add("application/json", []byte(`{"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}`))
	f.Add("", []byte(`{"schemaVersion":1,"fsLayers":[],"signatures":[]}`))
	f.Add("application/vnd.oci.image.manifest.v1+json; charset=utf-8", []byte(`{}`))
	f.Add("text/plain", []byte(`{"config":null,"layers":[{}]}`))
	f.Fuzz(func(t *testing.T, contentType string, body []byte) {
		got := manifestMediaType(contentType, body)
		// Whatever comes off the network, the result is a clean media type
		// the mirror can send on as a header.
		if got == "" || cleanMediaType(got) != got {
			t.Fatalf("manifestMediaType(%q, %q) = %q, not a clean media type", contentType, body, got)
		}
		if again := manifestMediaType(contentType, body); again != got {
			t.Fatalf("not deterministic: %q then %q", got, again)
		}
	})
}
