package api

import (
	"time"

	"github.com/thaw-dev/thaw/puller/prefetch"
)

// Status is GET /api/v1/status.
type Status struct {
	Version     string `json:"version"`
	DataDir     string `json:"dataDir"`
	MirrorAddr  string `json:"mirrorAddr"`
	MetricsAddr string `json:"metricsAddr"`
	StoreBytes  int64  `json:"storeBytes"`
	QuotaBytes  int64  `json:"quotaBytes"`
	Blobs       int    `json:"blobs"`
	Partial     int    `json:"partialBlobs"`
	Images      int    `json:"images"`
	Jobs        []Job  `json:"jobs"`
}

// Image is one entry of GET /api/v1/images.
type Image struct {
	Ref        string    `json:"ref"`
	Digest     string    `json:"digest"`
	MediaType  string    `json:"mediaType"`
	ResolvedAt time.Time `json:"resolvedAt"`
}

// Blob is one entry of GET /api/v1/blobs.
type Blob struct {
	Digest   string    `json:"digest"`
	Size     int64     `json:"size"`
	Present  int64     `json:"present"`
	Complete bool      `json:"complete"`
	Pinned   bool      `json:"pinned"`
	InUse    bool      `json:"inUse"`
	LastUsed time.Time `json:"lastUsed"`
}

// GCRequest is POST /api/v1/gc. Target is the store size to evict down to;
// nil means 90% of the quota (or everything evictable without a quota).
type GCRequest struct {
	Target *int64 `json:"target,omitempty"`
}

// GCResult lists what gc removed.
type GCResult struct {
	Removed    []Blob `json:"removed"`
	StoreBytes int64  `json:"storeBytes"`
}

// PrefetchRequest is POST /api/v1/prefetch.
type PrefetchRequest struct {
	Images       []string `json:"images"`
	Platforms    []string `json:"platforms,omitempty"`
	AllPlatforms bool     `json:"allPlatforms,omitempty"`
	// Containerd, if set, is containerd's socket: the images are also imported
	// into it (content and unpack) under Namespace (default "k8s.io").
	Containerd  string `json:"containerd,omitempty"`
	Namespace   string `json:"namespace,omitempty"`
	Snapshotter string `json:"snapshotter,omitempty"`
	// Wait streams progress as NDJSON PrefetchMessage lines until the job ends;
	// otherwise the job runs in the background and its id is returned.
	Wait bool `json:"wait,omitempty"`
}

// PrefetchMessage is one NDJSON line of a waited prefetch: exactly one field set.
type PrefetchMessage struct {
	Event  *prefetch.Event  `json:"event,omitempty"`
	Result *prefetch.Result `json:"result,omitempty"`
	// Imported names an image imported into containerd.
	Imported string `json:"imported,omitempty"`
	Error    string `json:"error,omitempty"`
}

// Job is a prefetch job, as GET /api/v1/status lists them.
type Job struct {
	ID       string            `json:"id"`
	Images   []string          `json:"images"`
	State    string            `json:"state"` // running, done, failed
	Error    string            `json:"error,omitempty"`
	Results  []prefetch.Result `json:"results,omitempty"`
	Started  time.Time         `json:"started"`
	Finished time.Time         `json:"finished,omitzero"`
}

// errorBody is every non-2xx answer.
type errorBody struct {
	Error string `json:"error"`
}
