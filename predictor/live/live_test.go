package live

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/thaw-dev/thaw/metrics"
	"github.com/thaw-dev/thaw/metrics/metricstest"
	"github.com/thaw-dev/thaw/p2p/cluster"
	"github.com/thaw-dev/thaw/predictor"
	"github.com/thaw-dev/thaw/puller/prefetch"
)

// standalone runs a one-node cluster (real Raft, no network) for the test.
func standalone(t *testing.T) *cluster.Node {
	t.Helper()
	cfg := cluster.DefaultConfig()
	cfg.NodeID = "node-a"
	cfg.DataDir = t.TempDir()
	cfg.Logger = slog.New(slog.DiscardHandler)
	n, err := cluster.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := n.Records(t.Context(), "probe", "")
		if err == nil {
			return n
		}
		if time.Now().After(deadline) {
			t.Fatalf("standalone cluster not ready: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// switchable lets a test say which Service's node leads.
type switchable struct {
	*cluster.Node
	leads *atomic.Bool
}

func (s switchable) Leading() bool { return s.leads.Load() && s.Node.Leading() }

type fakeImages struct{ blobs []v1.Descriptor }

func (f fakeImages) Contents(_ context.Context, ref name.Reference, _ prefetch.Platforms) (prefetch.Contents, error) {
	if strings.Contains(ref.String(), "missing") {
		return prefetch.Contents{}, errors.New("no such image")
	}
	return prefetch.Contents{Digest: f.blobs[0].Digest, Manifests: 1, Blobs: f.blobs}, nil
}

type fakeBlobs struct {
	mu   sync.Mutex
	have map[v1.Hash]bool
	fail error
}

func (f *fakeBlobs) Ensure(_ context.Context, repo name.Repository, d v1.Hash) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail != nil {
		return false, f.fail
	}
	if repo.String() == "" {
		return false, errors.New("no repository")
	}
	cached := f.have[d]
	f.have[d] = true
	return cached, nil
}

type fakeStore struct {
	mu   sync.Mutex
	pins map[v1.Hash]bool
}

func (f *fakeStore) Pin(_ context.Context, d v1.Hash) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.pins[d] = true
	return nil
}

func (f *fakeStore) Unpin(_ context.Context, d v1.Hash) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.pins, d)
	return nil
}

func (f *fakeStore) Usage() (int64, int64) { return 0, 10 << 30 }

func (f *fakeStore) pinned() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.pins)
}

func hash(s string) v1.Hash {
	h, _, _ := v1.SHA256(strings.NewReader(s))
	return h
}

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

type rig struct {
	s     *Service
	blobs *fakeBlobs
	store *fakeStore
	reg   *prometheus.Registry
}

func newRig(t *testing.T, c Cluster, clk *clock, leasePath string) *rig {
	t.Helper()
	r := &rig{blobs: &fakeBlobs{have: map[v1.Hash]bool{}}, store: &fakeStore{pins: map[v1.Hash]bool{}}, reg: prometheus.NewRegistry()}
	cfg := DefaultConfig()
	cfg.Node = "node-a"
	cfg.LeaseFile = leasePath
	img := fakeImages{blobs: []v1.Descriptor{{Digest: hash("config"), Size: 100}, {Digest: hash("layer"), Size: 1 << 20}}}
	s, err := New(cfg, Deps{Cluster: c, Images: img, Blobs: r.blobs, Store: r.store, Metrics: metrics.NewPredictor(r.reg), Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	s.now = clk.Now
	r.s = s
	return r
}

// minute runs one minute of the daemon's loops at the clock's time.
func (r *rig) tick(ctx context.Context) {
	r.s.flush(ctx)
	r.s.lead.tick(ctx)
	r.s.exec.tick(ctx)
	r.s.exec.wait()
}

func post(t *testing.T, h http.Handler, path string, body string) *httptest.ResponseRecorder {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, path, strings.NewReader(body)))
	return rec
}

// TestHintBecomesPinnedJob follows a hint through the leader's planning to
// this node's job: layers fetched, pinned until the hint lapses, state
// reported, and the pins released after it.
func TestHintBecomesPinnedJob(t *testing.T) {
	ctx := t.Context()
	clk := &clock{t: time.Now().UTC().Truncate(time.Minute).Add(5 * time.Second)}
	leases := t.TempDir() + "/leases.json"
	r := newRig(t, standalone(t), clk, leases)
	h := r.s.Handler()

	body := fmt.Sprintf(`{"function":"resize","image":"registry.example/fn/resize:v1","at":%q,"for":%d}`, clk.Now().Add(time.Minute).Format(time.RFC3339), int64(10*time.Minute))
	if rec := post(t, h, "/api/v1/hints", body); rec.Code != http.StatusCreated {
		t.Fatalf("hint: %d %s", rec.Code, rec.Body)
	}
	var jobs []JobView
	for range 3 {
		r.tick(ctx)
		clk.advance(time.Minute)
	}
	r.tick(ctx)
	jobs, err := r.s.jobs(ctx, "node-a")
	if err != nil {
		t.Fatal(err)
	}
	var hinted []JobView
	for _, j := range jobs {
		if j.Reason == "hint" {
			hinted = append(hinted, j)
		} else if !j.Background || j.Status.State != predictor.JobDone {
			t.Errorf("unexpected job %+v", j)
		}
	}
	if len(hinted) != 1 || hinted[0].App != "resize" || hinted[0].Status.State != predictor.JobDone || len(hinted[0].Layers) != 2 || hinted[0].Background {
		t.Fatalf("jobs after the hint: %+v", jobs)
	}
	if jobs[0].Layers[1].Repo != "registry.example/fn/resize" {
		t.Errorf("layer repository %q", jobs[0].Layers[1].Repo)
	}
	if got := r.store.pinned(); got != 2 {
		t.Errorf("%d layers pinned, want 2", got)
	}
	if got := metricstest.Sum(t, r.reg, "thaw_predictor_prefetch_bytes_total", nil); got != 100+1<<20 {
		t.Errorf("prefetched bytes %v", got)
	}
	// A container of the function starts: a hit.
	if err := r.s.Started("resize", "registry.example/fn/resize:v1", clk.Now()); err != nil {
		t.Fatal(err)
	}
	if got := metricstest.Sum(t, r.reg, "thaw_predictor_prefetch_hits_total", nil); got != 1 {
		t.Errorf("hits %v, want 1", got)
	}
	// A restart keeps the leases: a new executor on the same file releases
	// the pins once the job expires.
	r2 := newRig(t, r.s.d.Cluster, clk, leases)
	r2.store = r.store
	r2.s.d.Store = r.store
	clk.advance(30 * time.Minute)
	r2.tick(ctx)
	if got := r.store.pinned(); got != 0 {
		t.Errorf("%d layers still pinned after the hint lapsed", got)
	}
}

// TestModelSurvivesLeaderChange feeds two hours of a periodic function
// through one leader, hands leadership to another Service on the same
// replicated state, and checks that the new leader's model, rebuilt from
// the cluster's minutes, predicts what the old one did.
func TestModelSurvivesLeaderChange(t *testing.T) {
	ctx := t.Context()
	node := standalone(t)
	clk := &clock{t: time.Now().UTC().Truncate(time.Minute).Add(20 * time.Second)}
	aLeads, bLeads := &atomic.Bool{}, &atomic.Bool{}
	aLeads.Store(true)
	a := newRig(t, switchable{node, aLeads}, clk, "")
	b := newRig(t, switchable{node, bLeads}, clk, "")
	for m := range 150 {
		if m%10 == 0 {
			ev := fmt.Sprintf(`{"events":[{"function":"report","image":"registry.example/fn/report:v1","count":5,"start":%q}]}`, clk.Now().Format(time.RFC3339))
			if rec := post(t, a.s.Handler(), "/api/v1/events", ev); rec.Code != http.StatusAccepted {
				t.Fatalf("minute %d: %d %s", m, rec.Code, rec.Body)
			}
		}
		clk.advance(time.Minute)
		a.tick(ctx)
	}
	// Nodes' records were merged into one record per minute.
	if acts, _ := node.Records(ctx, kindActivity, ""); len(acts) > 1 {
		t.Errorf("%d activity records left unmerged", len(acts))
	}
	mins, _ := node.Records(ctx, kindMinute, "")
	if len(mins) != 15 {
		t.Errorf("%d minute records, want 15 (one per active minute)", len(mins))
	}
	horizon := time.Hour
	at := predictor.MinuteStart(a.s.lead.next)
	want := a.s.lead.model.Predict(at, horizon)
	if len(want) == 0 {
		t.Fatal("the first leader predicts nothing for a function invoked every 10 minutes")
	}
	aLeads.Store(false)
	bLeads.Store(true)
	a.tick(ctx)
	b.tick(ctx)
	if b.s.lead.model == nil {
		t.Fatal("the new leader did not rebuild its model")
	}
	if b.s.lead.next != a.s.lead.next {
		t.Errorf("new leader plans from minute %d, the old one was at %d", b.s.lead.next, a.s.lead.next)
	}
	got := b.s.lead.model.Predict(at, horizon)
	if !reflect.DeepEqual(got, want) {
		t.Errorf("after the leader change the model predicts\n%+v\nwant\n%+v", got, want)
	}
	if a.s.lead.engine != nil || a.s.lead.minutes != nil {
		t.Error("the old leader kept planning state")
	}
	// Activity while b leads, then a leads again: a must not write its
	// stale minutes over what b merged.
	ev := fmt.Sprintf(`{"events":[{"function":"late","image":"registry.example/fn/late:v1","count":1,"start":%q}]}`, clk.Now().Format(time.RFC3339))
	if rec := post(t, b.s.Handler(), "/api/v1/events", ev); rec.Code != http.StatusAccepted {
		t.Fatal(rec.Body)
	}
	clk.advance(time.Minute)
	b.tick(ctx)
	bLeads.Store(false)
	aLeads.Store(true)
	b.tick(ctx)
	a.tick(ctx)
	acts, err := a.s.Activity(ctx, clk.Now().Add(-3*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	seen := map[predictor.AppID]int{}
	for _, act := range acts {
		for _, c := range act.Apps {
			seen[c.App] += c.Invocations
		}
	}
	if seen["late"] != 1 || seen["report"] != 15*5 {
		t.Errorf("after leading twice the cluster holds %v, want late: 1, report: 75", seen)
	}
}

func TestPostEventsErrors(t *testing.T) {
	clk := &clock{t: time.Date(2026, 11, 26, 12, 0, 30, 0, time.UTC)}
	r := newRig(t, standalone(t), clk, "")
	h := r.s.Handler()
	for _, tc := range []struct {
		name, body, want string
		code             int
	}{
		{"not json", `{"events": [`, "bad event", 400},
		{"unknown field", `{"events":[{"function":"f","image":"r/i","count":1,"start":"2026-11-26T12:00:00Z","colour":1}]}`, `unknown field`, 400},
		{"wrong type", `{"events":[{"function":"f","image":"r/i","count":"1","start":"2026-11-26T12:00:00Z"}]}`, `count`, 400},
		{"no events", `{"events":[]}`, "no events", 400},
		{"bad image", `{"events":[{"function":"f","image":"UPPER/Case:","count":1,"start":"2026-11-26T12:00:00Z"}]}`, "event 0: image", 400},
		{"second event bad", `{"events":[{"function":"f","image":"r/i","count":1,"start":"2026-11-26T12:00:00Z"},{"function":"","image":"r/i","count":1,"start":"2026-11-26T12:00:00Z"}]}`, "event 1: function", 400},
		{"zero count", `{"events":[{"function":"f","image":"r/i","count":0,"start":"2026-11-26T12:00:00Z"}]}`, "count 0", 400},
		{"future", `{"events":[{"function":"f","image":"r/i","count":1,"start":"2026-11-26T12:05:00Z"}]}`, "in the future", 400},
		{"too old", `{"events":[{"function":"f","image":"r/i","count":1,"start":"2026-11-26T06:00:00Z"}]}`, "older than the history", 400},
		{"window backwards", `{"events":[{"function":"f","image":"r/i","count":1,"start":"2026-11-26T12:00:00Z","end":"2026-11-26T11:59:00Z"}]}`, "not after start", 400},
		{"ok", `{"events":[{"function":"f","image":"r/i","count":1,"start":"2026-11-26T12:00:00Z"}]}`, `"accepted":1`, 202},
	} {
		rec := post(t, h, "/api/v1/events", tc.body)
		if rec.Code != tc.code || !strings.Contains(rec.Body.String(), tc.want) {
			t.Errorf("%s: %d %s, want %d saying %q", tc.name, rec.Code, rec.Body, tc.code, tc.want)
		}
	}
	if got := metricstest.Sum(t, r.reg, "thaw_predictor_events_dropped_total", map[string]string{"reason": "invalid"}); got != 10 {
		t.Errorf("invalid events counted %v, want 10", got)
	}
	for _, tc := range []struct{ name, body, want string }{
		{"no image", `{"function":"f"}`, "image"},
		{"rate negative", `{"function":"f","image":"r/i","rate":-1}`, "rate -1"},
		{"over already", `{"function":"f","image":"r/i","at":"2026-11-26T10:00:00Z"}`, "over already"},
		{"far ahead", `{"function":"f","image":"r/i","at":"2027-11-26T10:00:00Z"}`, "ahead"},
	} {
		rec := post(t, h, "/api/v1/hints", tc.body)
		if rec.Code != 400 || !strings.Contains(rec.Body.String(), tc.want) {
			t.Errorf("hint %s: %d %s, want 400 saying %q", tc.name, rec.Code, rec.Body, tc.want)
		}
	}
	for _, tc := range []struct{ name, body, want string }{
		{"unknown node", `{"image":"r/i:v1","nodes":"ghost"}`, `is not a live member`},
		{"zero nodes", `{"image":"r/i:v1","nodes":"0"}`, "at least 1"},
		{"bad image", `{"image":"::","nodes":"all"}`, "image"},
		{"unresolvable", `{"image":"r/missing:v1","nodes":"all"}`, "no such image"},
	} {
		rec := post(t, h, "/api/v1/jobs", tc.body)
		if rec.Code < 400 || !strings.Contains(rec.Body.String(), tc.want) {
			t.Errorf("job %s: %d %s, want an error saying %q", tc.name, rec.Code, rec.Body, tc.want)
		}
	}
}

// TestEventFloodBounded sends more events than the rate limit allows and
// more apps than the cap: both are refused with 429 and counted, and what
// was taken stays within the cap.
func TestEventFloodBounded(t *testing.T) {
	clk := &clock{t: time.Date(2026, 11, 26, 12, 0, 30, 0, time.UTC)}
	r := newRig(t, standalone(t), clk, "")
	a, err := NewAggregator(AggregatorConfig{Rate: 1, Burst: 1500, MaxApps: 100}, r.s.d.Metrics)
	if err != nil {
		t.Fatal(err)
	}
	r.s.intake = a
	batch := func(events int, offset int) string {
		var evs []string
		for i := range events {
			evs = append(evs, fmt.Sprintf(`{"function":"f%d","image":"r/i","count":1,"start":"2026-11-26T12:00:00Z"}`, offset+i%100))
		}
		return `{"events":[` + strings.Join(evs, ",") + `]}`
	}
	h := r.s.Handler()
	if rec := post(t, h, "/api/v1/events", batch(100, 0)); rec.Code != 202 {
		t.Fatalf("first 100 apps: %d %s", rec.Code, rec.Body)
	}
	if rec := post(t, h, "/api/v1/events", batch(1, 100)); rec.Code != 429 || !strings.Contains(rec.Body.String(), "too many apps") {
		t.Errorf("the 101st app: %d %s, want 429", rec.Code, rec.Body)
	}
	if rec := post(t, h, "/api/v1/events", batch(10, 0)); rec.Code != 202 {
		t.Errorf("known apps again: %d %s", rec.Code, rec.Body)
	}
	var refused int
	for range 3 {
		if rec := post(t, h, "/api/v1/events", batch(1000, 0)); rec.Code == 429 {
			refused++
		}
	}
	if refused == 0 {
		t.Error("3000 events against a burst of 1500 and 1/s: none refused")
	}
	if got := metricstest.Sum(t, r.reg, "thaw_predictor_events_dropped_total", map[string]string{"reason": "rate"}); got < 1000 {
		t.Errorf("rate-limited events counted %v", got)
	}
	if got := metricstest.Sum(t, r.reg, "thaw_predictor_events_dropped_total", map[string]string{"reason": "apps"}); got != 1 {
		t.Errorf("events over the app cap counted %v, want 1", got)
	}
	acts := a.Flush(clk.Now().Add(time.Minute))
	if len(acts) != 1 || len(acts[0].Apps) != 100 {
		t.Fatalf("flushed %+v", acts)
	}
}

func TestEventWindowSpread(t *testing.T) {
	e := Event{Function: "f", Image: "r/i", Count: 10, Start: time.Date(2026, 1, 1, 0, 0, 30, 0, time.UTC), End: time.Date(2026, 1, 1, 0, 3, 0, 0, time.UTC)}
	got := e.minutes()
	total := 0
	for _, n := range got {
		total += n
	}
	m0 := predictor.Minute(e.Start)
	if total != 10 || got[m0] != 2 || got[m0+1] != 4 || got[m0+2] != 4 {
		t.Errorf("spread %v, want 2, 4, 4", got)
	}
}

func TestLeasesFileCorrupt(t *testing.T) {
	path := t.TempDir() + "/leases.json"
	if err := writeFile(path, "{not json"); err != nil {
		t.Fatal(err)
	}
	if _, err := openLeases(path); err == nil || !strings.Contains(err.Error(), path) {
		t.Errorf("corrupt lease file: %v", err)
	}
}

func FuzzParseBatch(f *testing.F) {
	f.Add([]byte(`{"events":[{"function":"f","image":"r/i","count":3,"start":"2026-11-26T12:00:00Z","end":"2026-11-26T12:10:00Z"}]}`))
	f.Add([]byte(`{"events":[{"function":"f\u0000","image":"r/i","count":1,"start":"2026-11-26T12:00:00Z"}]}`))
	f.Add([]byte(`{"events":null}`))
	now := time.Date(2026, 11, 26, 12, 30, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, body []byte) {
		b, err := ParseBatch(bytes.NewReader(body), now, 4*time.Hour)
		if err != nil {
			if !errors.Is(err, ErrBadEvent) {
				t.Fatalf("error not wrapping ErrBadEvent: %v", err)
			}
			return
		}
		for _, e := range b.Events {
			total := 0
			for m, n := range e.minutes() {
				if n <= 0 || m < predictor.Minute(e.Start) || m > predictor.Minute(e.End) {
					t.Fatalf("event %+v spread to minute %d: %d", e, m, n)
				}
				total += n
			}
			if total != e.Count {
				t.Fatalf("event %+v spread %d, want %d", e, total, e.Count)
			}
			if _, err := json.Marshal(e); err != nil {
				t.Fatal(err)
			}
		}
	})
}

func writeFile(path, s string) error { return os.WriteFile(path, []byte(s), 0o644) }

// TestFailedJobRunsAgain: a job that failed (the registry unreachable)
// runs again after a backoff while it is in force and completes once the
// cause is gone; a job that keeps failing stops after maxFailures.
func TestFailedJobRunsAgain(t *testing.T) {
	ctx := t.Context()
	clk := &clock{t: time.Now().UTC().Truncate(time.Minute).Add(5 * time.Second)}
	r := newRig(t, standalone(t), clk, t.TempDir()+"/leases.json")
	r.blobs.mu.Lock()
	r.blobs.fail = errors.New("registry unreachable")
	r.blobs.mu.Unlock()
	body := fmt.Sprintf(`{"function":"resize","image":"registry.example/fn/resize:v1","at":%q,"for":%d}`, clk.Now().Add(time.Minute).Format(time.RFC3339), int64(time.Hour))
	if rec := post(t, r.s.Handler(), "/api/v1/hints", body); rec.Code != http.StatusCreated {
		t.Fatalf("hint: %d %s", rec.Code, rec.Body)
	}
	hinted := func() JobView {
		t.Helper()
		jobs, err := r.s.jobs(ctx, "node-a")
		if err != nil {
			t.Fatal(err)
		}
		for _, j := range jobs {
			if j.Reason == "hint" {
				return j
			}
		}
		t.Fatalf("no hinted job among %+v", jobs)
		return JobView{}
	}
	for range 2 {
		r.tick(ctx)
		clk.advance(time.Minute)
	}
	r.tick(ctx)
	if j := hinted(); j.Status.State != predictor.JobFailed || !strings.Contains(j.Status.Error, "registry unreachable") {
		t.Fatalf("with the registry down the job is %+v, want failed with the cause", j.Status)
	}
	failures := 0
	r.s.exec.mu.Lock()
	for _, run := range r.s.exec.runs {
		if run.job.Reason == "hint" {
			failures = run.failures
		}
	}
	r.s.exec.mu.Unlock()
	r.blobs.mu.Lock()
	r.blobs.fail = nil
	r.blobs.mu.Unlock()
	clk.advance(retryDelay(failures) - time.Second)
	r.tick(ctx)
	if j := hinted(); j.Status.State != predictor.JobFailed {
		t.Fatalf("the job ran again before its backoff (%s after %d failures) passed: %+v", retryDelay(failures), failures, j.Status)
	}
	clk.advance(time.Second)
	r.tick(ctx)
	if j := hinted(); j.Status.State != predictor.JobDone {
		t.Fatalf("after the registry came back the job is %+v, want done", j.Status)
	}
	if got := r.store.pinned(); got != 2 {
		t.Errorf("%d layers pinned, want 2", got)
	}

	// A job that never works stops after maxFailures runs.
	r2 := newRig(t, standalone(t), clk, t.TempDir()+"/leases.json")
	r2.blobs.fail = errors.New("no such repository")
	if rec := post(t, r2.s.Handler(), "/api/v1/hints", body); rec.Code != http.StatusCreated {
		t.Fatalf("hint: %d %s", rec.Code, rec.Body)
	}
	var calls int
	for range 40 {
		r2.tick(ctx)
		clk.advance(time.Minute)
	}
	r2.s.exec.mu.Lock()
	for _, run := range r2.s.exec.runs {
		if run.job.Reason == "hint" {
			calls = run.failures
		}
	}
	r2.s.exec.mu.Unlock()
	if calls != maxFailures {
		t.Fatalf("a job that always fails ran %d times in 40 minutes, want %d", calls, maxFailures)
	}
}
