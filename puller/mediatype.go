package puller

import (
	"encoding/json"
	"mime"
)

// Manifest media types the mirror serves, Docker and OCI.
const (
	MediaTypeDockerManifest     = "application/vnd.docker.distribution.manifest.v2+json"
	MediaTypeDockerManifestList = "application/vnd.docker.distribution.manifest.list.v2+json"
	MediaTypeOCIManifest        = "application/vnd.oci.image.manifest.v1+json"
	MediaTypeOCIIndex           = "application/vnd.oci.image.index.v1+json"
)

// ManifestMediaTypes is the Accept list sent upstream, most specific first.
var ManifestMediaTypes = []string{
	MediaTypeOCIIndex, MediaTypeDockerManifestList, MediaTypeOCIManifest, MediaTypeDockerManifest,
}

// IsIndex reports whether mt names a multi-platform index or manifest list.
func IsIndex(mt string) bool {
	return mt == MediaTypeOCIIndex || mt == MediaTypeDockerManifestList
}

// DetectMediaType returns a manifest's media type: the Content-Type a registry
// sent when it is a known manifest type, else the document's mediaType field,
// else (OCI allows omitting it) index when it lists manifests, image manifest
// otherwise.
func DetectMediaType(contentType string, body []byte) string {
	if ct, _, err := mime.ParseMediaType(contentType); err == nil {
		for _, mt := range ManifestMediaTypes {
			if ct == mt {
				return mt
			}
		}
	}
	var doc struct {
		MediaType string          `json:"mediaType"`
		Manifests json.RawMessage `json:"manifests"`
	}
	if err := json.Unmarshal(body, &doc); err == nil {
		if doc.MediaType != "" {
			return doc.MediaType
		}
		if doc.Manifests != nil {
			return MediaTypeOCIIndex
		}
	}
	return MediaTypeOCIManifest
}
