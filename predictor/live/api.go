package live

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"

	"github.com/thaw-dev/thaw/p2p"
	"github.com/thaw-dev/thaw/predictor"
)

// Routes the Service serves on the daemon's API (see Handler).
const (
	RouteEvents = "POST /api/v1/events"
	RouteHints  = "POST /api/v1/hints"
	RouteJobs   = "POST /api/v1/jobs"
	RouteList   = "GET /api/v1/jobs"
	RouteActive = "GET /api/v1/activity"
)

// Handler serves the predictor's part of the daemon API under one mux:
//
//	POST /api/v1/events  a Batch of invocation counts (202, or 400 naming the bad event, 429 when flooded)
//	POST /api/v1/hints   a Hint (201)
//	POST /api/v1/jobs    a JobRequest: prefetch an image on chosen nodes (201, the jobs)
//	GET  /api/v1/jobs    the jobs in force with their states (?node=NAME for one node's)
//	GET  /api/v1/activity the activity the cluster holds, per minute (?since=RFC3339)
func (s *Service) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc(RouteEvents, s.postEvents)
	mux.HandleFunc(RouteHints, s.postHint)
	mux.HandleFunc(RouteJobs, s.postJobs)
	mux.HandleFunc(RouteList, s.listJobs)
	mux.HandleFunc(RouteActive, s.listActivity)
	return mux
}

// Started counts a container start of function (running image) on this
// node: an event for the models, and a prefetch hit when a job prepared it.
func (s *Service) Started(function, image string, at time.Time) error {
	ev := Event{Function: function, Image: image, Count: 1, Start: at}
	if err := ev.normalize(s.now(), s.cfg.History); err != nil {
		if s.d.Metrics != nil {
			s.d.Metrics.EventsDropped.WithLabelValues("invalid").Inc()
		}
		return fmt.Errorf("%w: container start: %v", ErrBadEvent, err)
	}
	s.exec.started(predictor.AppID(function))
	return s.intake.Add("containerd", []Event{ev}, true)
}

func (s *Service) postEvents(w http.ResponseWriter, r *http.Request) {
	b, err := ParseBatch(http.MaxBytesReader(w, r.Body, MaxBatchBytes+1), s.now(), s.cfg.History)
	if err != nil {
		if s.d.Metrics != nil {
			s.d.Metrics.EventsDropped.WithLabelValues("invalid").Inc()
		}
		writeError(w, http.StatusBadRequest, err)
		return
	}
	if err := s.intake.Add("api", b.Events, false); err != nil {
		w.Header().Set("Retry-After", "1")
		writeError(w, http.StatusTooManyRequests, err)
		return
	}
	writeJSON(w, http.StatusAccepted, map[string]int{"accepted": len(b.Events)})
}

func (s *Service) postHint(w http.ResponseWriter, r *http.Request) {
	h, err := ParseHint(r.Body, s.now())
	if err != nil {
		writeError(w, http.StatusBadRequest, err)
		return
	}
	rec, err := record(kindHint, h.Function, "", h.At.Add(h.For), h)
	if err == nil {
		err = s.d.Cluster.PutRecords(r.Context(), []p2p.Record{rec}, nil)
	}
	if err != nil {
		writeError(w, statusOf(err), fmt.Errorf("record the hint: %w", err))
		return
	}
	if s.d.Metrics != nil {
		s.d.Metrics.Events.WithLabelValues("hint").Inc()
	}
	writeJSON(w, http.StatusCreated, h)
}

// JobRequest is the body of POST /api/v1/jobs (`thaw prefetch --nodes`).
type JobRequest struct {
	Image string `json:"image"`
	// Nodes: "all", a number of nodes (those holding most of the image
	// first, as Kubernetes' ImageLocality scores them), or node names
	// separated by commas.
	Nodes string `json:"nodes"`
	// Pin keeps the image pinned on the nodes for this long (0: not
	// pinned: a background job, the first content to go when a node
	// needs room).
	Pin time.Duration `json:"pin,omitempty"`
}

// manualTTL is how long an unpinned manual job's record stays.
const manualTTL = time.Hour

func (s *Service) postJobs(w http.ResponseWriter, r *http.Request) {
	var req JobRequest
	dec := json.NewDecoder(io.LimitReader(r.Body, 64<<10))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		writeError(w, http.StatusBadRequest, fmt.Errorf("%w: job request: %v", ErrBadEvent, err))
		return
	}
	jobs, err := s.Prefetch(r.Context(), req)
	if err != nil {
		writeError(w, statusOf(err), err)
		return
	}
	writeJSON(w, http.StatusCreated, jobs)
}

// Prefetch records manual jobs that bring req.Image to the nodes req names.
func (s *Service) Prefetch(ctx context.Context, req JobRequest) ([]predictor.Job, error) {
	if req.Pin < 0 || req.Pin > MaxHintAhead {
		return nil, fmt.Errorf("%w: pin %s: want 0 to %s", ErrBadEvent, req.Pin, MaxHintAhead)
	}
	if _, err := name.ParseReference(req.Image); err != nil {
		return nil, fmt.Errorf("%w: image %q: %v", ErrBadEvent, req.Image, err)
	}
	img, err := resolveImage(ctx, s, req.Image)
	if err != nil {
		return nil, fmt.Errorf("resolve %s: %w", req.Image, err)
	}
	nodes, err := s.choose(ctx, req.Nodes, img)
	if err != nil {
		return nil, err
	}
	now := s.now().UTC()
	expires := now.Add(cmp.Or(req.Pin, manualTTL))
	var jobs []predictor.Job
	var put []p2p.Record
	for _, n := range nodes {
		j := predictor.Job{
			ID:   fmt.Sprintf("manual/%s/%s/%d", n, img.Name, now.UnixNano()),
			Node: n, Layers: img.Layers, Deadline: now, Expires: expires,
			Reason: "manual", Background: req.Pin == 0,
		}
		rec, err := record(kindJob, j.ID, n, j.Expires, j)
		if err != nil {
			return nil, err
		}
		jobs, put = append(jobs, j), append(put, rec)
	}
	if err := s.d.Cluster.PutRecords(ctx, put, nil); err != nil {
		return nil, fmt.Errorf("record the jobs: %w", err)
	}
	if s.d.Metrics != nil {
		s.d.Metrics.JobsIssued.WithLabelValues("manual").Add(float64(len(jobs)))
	}
	return jobs, nil
}

// choose picks the nodes a manual job goes to.
func (s *Service) choose(ctx context.Context, spec string, img predictor.Image) ([]p2p.NodeID, error) {
	members, err := s.d.Cluster.Members(ctx)
	if err != nil {
		return nil, fmt.Errorf("list the cluster's members: %w", err)
	}
	alive := map[p2p.NodeID]bool{}
	var ids []p2p.NodeID
	for _, m := range members {
		if m.Alive {
			alive[m.ID] = true
			ids = append(ids, m.ID)
		}
	}
	spec = strings.TrimSpace(spec)
	if spec == "" || spec == "all" {
		return ids, nil
	}
	if n, err := strconv.Atoi(spec); err == nil {
		if n < 1 {
			return nil, fmt.Errorf("%w: nodes %d: want at least 1", ErrBadEvent, n)
		}
		// Nodes that already hold the most of the image first.
		held := map[p2p.NodeID]int64{}
		for _, l := range img.Layers {
			st, err := s.d.Cluster.Blob(ctx, l.Digest)
			if err != nil {
				return nil, err
			}
			for _, h := range st.Holders {
				held[h.Node] += l.Size
			}
		}
		slices.SortStableFunc(ids, func(a, b p2p.NodeID) int { return cmp.Compare(held[b], held[a]) })
		return ids[:min(n, len(ids))], nil
	}
	var out []p2p.NodeID
	for _, part := range strings.Split(spec, ",") {
		id := p2p.NodeID(strings.TrimSpace(part))
		if !alive[id] {
			return nil, fmt.Errorf("%w: node %q is not a live member of the cluster", p2p.ErrNotMember, id)
		}
		if !slices.Contains(out, id) {
			out = append(out, id)
		}
	}
	return out, nil
}

func (s *Service) listJobs(w http.ResponseWriter, r *http.Request) {
	jobs, err := s.jobs(r.Context(), p2p.NodeID(r.URL.Query().Get("node")))
	if err != nil {
		writeError(w, statusOf(err), err)
		return
	}
	writeJSON(w, http.StatusOK, jobs)
}

// jobs lists the jobs of node (every node's when empty) with their states.
func (s *Service) jobs(ctx context.Context, node p2p.NodeID) ([]JobView, error) {
	js, err := s.d.Cluster.Records(ctx, kindJob, node)
	if err != nil {
		return nil, err
	}
	sts, err := s.d.Cluster.Records(ctx, kindJobState, node)
	if err != nil {
		return nil, err
	}
	states := map[string]JobStatus{}
	for _, r := range sts {
		if st, err := decodeRecord[JobStatus](r); err == nil {
			states[r.Key] = st
		}
	}
	out := make([]JobView, 0, len(js))
	for _, r := range js {
		j, err := decodeRecord[predictor.Job](r)
		if err != nil {
			s.log.Warn("job record dropped", "err", err)
			continue
		}
		st, ok := states[j.ID]
		if !ok {
			st.State = predictor.JobPending
		}
		out = append(out, JobView{Job: j, Status: st})
	}
	return out, nil
}

func (s *Service) listActivity(w http.ResponseWriter, r *http.Request) {
	since := s.now().Add(-time.Hour)
	if v := r.URL.Query().Get("since"); v != "" {
		t, err := time.Parse(time.RFC3339, v)
		if err != nil {
			writeError(w, http.StatusBadRequest, fmt.Errorf("%w: since %q: %v", ErrBadEvent, v, err))
			return
		}
		since = t
	}
	acts, err := s.Activity(r.Context(), since)
	if err != nil {
		writeError(w, statusOf(err), err)
		return
	}
	writeJSON(w, http.StatusOK, acts)
}

// Activity is what the cluster holds of the minutes since since, merged
// across nodes, oldest first: the leader's merged minutes and the nodes'
// counts it has not merged yet.
func (s *Service) Activity(ctx context.Context, since time.Time) ([]Activity, error) {
	merged := map[int64]map[predictor.AppID]*AppCount{}
	for _, kind := range []string{kindMinute, kindActivity} {
		rs, err := s.d.Cluster.Records(ctx, kind, "")
		if err != nil {
			return nil, err
		}
		for _, r := range rs {
			act, err := decodeRecord[Activity](r)
			if err != nil || predictor.MinuteStart(act.Minute).Before(since.Truncate(time.Minute)) {
				continue
			}
			apps, ok := merged[act.Minute]
			if !ok {
				apps = map[predictor.AppID]*AppCount{}
				merged[act.Minute] = apps
			}
			mergeApps(apps, act.Apps)
		}
	}
	out := make([]Activity, 0, len(merged))
	for m, apps := range merged {
		out = append(out, Activity{Minute: m, Apps: sortedApps(apps)})
	}
	slices.SortFunc(out, func(x, y Activity) int { return cmp.Compare(x.Minute, y.Minute) })
	return out, nil
}

func statusOf(err error) int {
	switch {
	case errors.Is(err, ErrBadEvent):
		return http.StatusBadRequest
	case errors.Is(err, p2p.ErrNotMember):
		return http.StatusNotFound
	case errors.Is(err, p2p.ErrStateFull):
		return http.StatusInsufficientStorage
	case errors.Is(err, p2p.ErrNoLeader):
		return http.StatusServiceUnavailable
	}
	return http.StatusBadGateway
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, status int, err error) {
	writeJSON(w, status, map[string]string{"error": err.Error()})
}
