package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/name"

	"github.com/thaw-dev/thaw/puller/catalog"
	"github.com/thaw-dev/thaw/puller/prefetch"
	"github.com/thaw-dev/thaw/puller/store"
)

// Importer imports an image that is in the node's store into containerd.
type Importer interface {
	// Import makes ref (content and unpacked snapshots) present in the
	// containerd at address, in namespace, for the platforms given.
	Import(ctx context.Context, address, namespace, snapshotter string, ref name.Reference, plat prefetch.Platforms) error
}

// Deps is what the API serves from.
type Deps struct {
	Store      store.Admin
	Catalog    *catalog.Catalog
	Prefetcher *prefetch.Prefetcher
	// Importer is nil when containerd import is not available.
	Importer Importer
	// Status fills the static part of Status (version, addresses).
	Status Status
	Log    *slog.Logger
	// Ctx bounds background jobs: they stop when the daemon stops.
	Ctx context.Context
}

// maxJobs bounds the job history kept for status.
const maxJobs = 100

// Server is the API handler.
type Server struct {
	deps Deps
	mux  *http.ServeMux

	mu     sync.Mutex
	jobs   []*Job
	nextID int
	wg     sync.WaitGroup
}

// NewServer returns the API handler. Wait waits for background jobs.
func NewServer(d Deps) *Server {
	s := &Server{deps: d, mux: http.NewServeMux()}
	s.mux.HandleFunc("GET /api/v1/status", s.status)
	s.mux.HandleFunc("GET /api/v1/images", s.images)
	s.mux.HandleFunc("GET /api/v1/blobs", s.blobs)
	s.mux.HandleFunc("POST /api/v1/gc", s.gc)
	s.mux.HandleFunc("POST /api/v1/prefetch", s.prefetch)
	return s
}

// Handle mounts a handler of another part of the daemon (the peer network's
// /api/v1/peers) on the API, so that the API does not depend on it.
func (s *Server) Handle(pattern string, h http.Handler) { s.mux.Handle(pattern, h) }

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.mux.ServeHTTP(w, r) }

// Wait blocks until background jobs have stopped.
func (s *Server) Wait() { s.wg.Wait() }

func (s *Server) status(w http.ResponseWriter, r *http.Request) {
	st := s.deps.Status
	st.StoreBytes, st.QuotaBytes = s.deps.Store.Usage()
	infos, err := s.deps.Store.List(r.Context())
	if err != nil {
		writeError(w, http.StatusInternalServerError, err)
		return
	}
	for _, i := range infos {
		if i.Complete {
			st.Blobs++
		} else {
			st.Partial++
		}
	}
	st.Images = len(s.deps.Catalog.Images())
	s.mu.Lock()
	for _, j := range s.jobs {
		st.Jobs = append(st.Jobs, *j)
	}
	s.mu.Unlock()
	writeJSON(w, st)
}

func (s *Server) images(w http.ResponseWriter, r *http.Request) {
	out := []Image{}
	for _, img := range s.deps.Catalog.Images() {
		out = append(out, Image{Ref: img.Ref, Digest: img.Digest.String(), MediaType: img.MediaType, ResolvedAt: img.ResolvedAt})
	}
	writeJSON(w, out)
}

func (s *Server) blobs(w http.ResponseWriter, r *http.Request) {
	infos, err := s.deps.Store.List(r.Context())
	if err != nil {
		writeError(w, http.StatusInternalServerError, err)
		return
	}
	out := make([]Blob, 0, len(infos))
	for _, i := range infos {
		out = append(out, blobOf(i))
	}
	writeJSON(w, out)
}

func blobOf(i store.Info) Blob {
	return Blob{Digest: i.Digest.String(), Size: i.Size, Present: i.Present, Complete: i.Complete, Pinned: i.Pinned, InUse: i.InUse, LastUsed: i.LastUsed}
}

func (s *Server) gc(w http.ResponseWriter, r *http.Request) {
	var req GCRequest
	if err := decode(r, &req); err != nil {
		writeError(w, http.StatusBadRequest, err)
		return
	}
	target := int64(0)
	if _, quota := s.deps.Store.Usage(); quota > 0 {
		target = quota / 10 * 9
	}
	if req.Target != nil {
		if *req.Target < 0 {
			writeError(w, http.StatusBadRequest, fmt.Errorf("gc target %d: must be >= 0", *req.Target))
			return
		}
		target = *req.Target
	}
	removed, err := s.deps.Store.Evict(r.Context(), target)
	if err != nil {
		writeError(w, http.StatusInternalServerError, err)
		return
	}
	res := GCResult{Removed: []Blob{}}
	for _, i := range removed {
		res.Removed = append(res.Removed, blobOf(i))
	}
	res.StoreBytes, _ = s.deps.Store.Usage()
	writeJSON(w, res)
}

func (s *Server) prefetch(w http.ResponseWriter, r *http.Request) {
	var req PrefetchRequest
	if err := decode(r, &req); err != nil {
		writeError(w, http.StatusBadRequest, err)
		return
	}
	refs, err := parseRefs(req.Images)
	if err != nil {
		writeError(w, http.StatusBadRequest, err)
		return
	}
	for _, p := range req.Platforms {
		if _, err := parsePlatform(p); err != nil {
			writeError(w, http.StatusBadRequest, err)
			return
		}
	}
	if req.Containerd != "" && s.deps.Importer == nil {
		writeError(w, http.StatusNotImplemented, errors.New("this daemon cannot import into containerd"))
		return
	}
	job := s.newJob(req.Images)
	if !req.Wait {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.run(s.deps.Ctx, job, req, refs, nil)
		}()
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusAccepted)
		json.NewEncoder(w).Encode(job.snapshot(&s.mu))
		return
	}

	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	flusher, _ := w.(http.Flusher)
	enc := json.NewEncoder(w)
	send := func(m PrefetchMessage) {
		enc.Encode(m)
		if flusher != nil {
			flusher.Flush()
		}
	}
	// A client that hangs up cancels a waited job; a daemon that stops does too.
	ctx, cancel := context.WithCancel(r.Context())
	stop := context.AfterFunc(s.deps.Ctx, cancel)
	defer stop()
	defer cancel()
	if err := s.run(ctx, job, req, refs, send); err != nil {
		send(PrefetchMessage{Error: err.Error()})
	}
}

// run performs a prefetch job, sending progress to send when it is not nil.
func (s *Server) run(ctx context.Context, job *Job, req PrefetchRequest, refs []name.Reference, send func(PrefetchMessage)) error {
	plat := prefetch.Platforms{All: req.AllPlatforms, Only: req.Platforms}
	var progress func(prefetch.Event)
	if send != nil {
		progress = func(e prefetch.Event) { send(PrefetchMessage{Event: &e}) }
	}
	ns := req.Namespace
	if ns == "" {
		ns = "k8s.io"
	}
	var err error
	for _, ref := range refs {
		var res prefetch.Result
		res, err = s.deps.Prefetcher.Pull(ctx, ref, plat, progress)
		if err != nil {
			break
		}
		s.mu.Lock()
		job.Results = append(job.Results, res)
		s.mu.Unlock()
		if send != nil {
			send(PrefetchMessage{Result: &res})
		}
		if req.Containerd != "" {
			if err = s.deps.Importer.Import(ctx, req.Containerd, ns, req.Snapshotter, ref, plat); err != nil {
				err = fmt.Errorf("import %s into containerd: %w", ref.Name(), err)
				break
			}
			if send != nil {
				send(PrefetchMessage{Imported: ref.Name()})
			}
		}
	}
	s.mu.Lock()
	job.Finished = time.Now()
	job.State = "done"
	if err != nil {
		job.State, job.Error = "failed", err.Error()
	}
	s.mu.Unlock()
	if err != nil {
		s.deps.Log.Warn("prefetch job failed", "job", job.ID, "err", err)
	} else {
		s.deps.Log.Info("prefetch job done", "job", job.ID, "images", job.Images)
	}
	return err
}

func (s *Server) newJob(images []string) *Job {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.nextID++
	j := &Job{ID: strconv.Itoa(s.nextID), Images: images, State: "running", Started: time.Now()}
	s.jobs = append(s.jobs, j)
	if len(s.jobs) > maxJobs {
		s.jobs = s.jobs[len(s.jobs)-maxJobs:]
	}
	return j
}

func (j *Job) snapshot(mu *sync.Mutex) Job {
	mu.Lock()
	defer mu.Unlock()
	return *j
}

func parseRefs(images []string) ([]name.Reference, error) {
	if len(images) == 0 {
		return nil, errors.New("no image given")
	}
	refs := make([]name.Reference, 0, len(images))
	for _, img := range images {
		ref, err := name.ParseReference(img, name.StrictValidation)
		if err != nil {
			// StrictValidation refuses implicit docker.io and :latest; accept them.
			if ref, err = name.ParseReference(img); err != nil {
				return nil, fmt.Errorf("image %q is not a valid reference (want [registry/]repository[:tag|@digest]): %w", img, err)
			}
		}
		refs = append(refs, ref)
	}
	return refs, nil
}

func parsePlatform(p string) (string, error) {
	if _, err := prefetchPlatform(p); err != nil {
		return "", fmt.Errorf("platform %q (want os/arch[/variant]): %w", p, err)
	}
	return p, nil
}

// maxRequestBody bounds API request bodies.
const maxRequestBody = 1 << 20

func decode(r *http.Request, v any) error {
	if r.ContentLength == 0 {
		return nil
	}
	dec := json.NewDecoder(http.MaxBytesReader(nil, r.Body, maxRequestBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("request body: %w", err)
	}
	return nil
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, status int, err error) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(errorBody{Error: err.Error()})
}
