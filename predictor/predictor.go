package predictor

import (
	"errors"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/thaw-dev/thaw/p2p"
)

// Errors of the predictor packages; callers test them with errors.Is.
var (
	// ErrInvalidConfig is wrapped by every error a Config's Validate (and
	// a constructor given a bad configuration) returns.
	ErrInvalidConfig = errors.New("invalid predictor config")
)

// AppID names what the predictor models and prefetches for: one deployable
// unit with one image, such as an Azure Functions app (HashApp in the
// traces) or a Knative service. The invocations of several functions of one
// app add up.
type AppID string

// Observation is one app's activity in one minute, what the models learn
// from.
type Observation struct {
	App AppID
	// Invocations that started in the minute.
	Invocations int
	// Instances the app needed in the minute: concurrent executions, that is
	// invocations × mean duration / 60 s rounded up, at least 1 when there
	// were invocations (Little's law). A live integration counts running
	// containers instead.
	Instances int
	// Timer: some of the invocations came from a timer (schedule) trigger,
	// which makes periodicity likely.
	Timer bool
}

// Prediction says an app is expected to start instances in [From, Until):
// its image should be on enough nodes by From and kept there until Until.
type Prediction struct {
	App         AppID
	From, Until time.Time
	// Instances is how many instances are expected at once at the peak of
	// the window, at least 1.
	Instances int
	// Model names the model that made the prediction (metrics label).
	Model string
}

// Model learns per-app invocation patterns and predicts which apps will be
// active soon. A Model is not safe for concurrent use: one goroutine (the
// leader's planning loop, or a replay) calls Observe and Predict in turn,
// and each call is cheap (in-memory, no I/O), proportional to the number of
// apps it tracks.
type Model interface {
	// Observe records the minute that starts at minute: obs lists the apps
	// with invocations in it, at most once each; an app not listed had none.
	// Minutes come in increasing order; a skipped minute is a minute with
	// no invocations. Observe does not retain obs.
	Observe(minute time.Time, obs []Observation)
	// Predict returns at most one Prediction per app whose window overlaps
	// [now, now+horizon), now being the start of a minute after the last
	// one observed. It does not change the model.
	Predict(now time.Time, horizon time.Duration) []Prediction
}

// Layer is one blob of an image.
type Layer struct {
	Digest v1.Hash `json:"digest"`
	Size   int64   `json:"size"`
	// Repo is a repository the layer can be fetched from
	// ("registry/path"); empty in a simulation.
	Repo string `json:"repo,omitempty"`
}

// Image is what an app runs: its layers, base (runtime) layers first.
type Image struct {
	Name   string  `json:"name"`
	Layers []Layer `json:"layers"`
}

// Size is the sum of the image's layer sizes.
func (im Image) Size() int64 {
	var n int64
	for _, l := range im.Layers {
		n += l.Size
	}
	return n
}

// Catalog maps apps to their images: the apps deployed on the platform,
// whether or not they have been invoked yet.
type Catalog interface {
	// Image returns app's image; false when the app is unknown.
	Image(app AppID) (Image, bool)
	// Apps lists the known apps in a stable order.
	Apps() []AppID
}

// NodeInfo is one node as the planner sees it.
type NodeInfo struct {
	ID p2p.NodeID
	// Budget is the disk the node gives to image content, in bytes.
	Budget int64
	// Used is the bytes of content on the node, complete or arriving.
	Used int64
	// InUse is the bytes of content running instances use, which cannot
	// be evicted; pins share what is left.
	InUse int64
	// Load is the share of the node's capacity for instances in use, 0 to
	// 1; the planner prefers lightly loaded nodes, where the scheduler can
	// still place an instance.
	Load float64
}

// ClusterView is what the planner reads of the cluster. Implementations
// answer from memory (the leader's replicated state, or a simulation), and
// the planner asks many times a step, so each answer must be cheap.
type ClusterView interface {
	// Nodes lists the nodes that take prefetch jobs, in a stable order.
	Nodes() []NodeInfo
	// Has reports whether node holds dgst, complete or arriving.
	Has(node p2p.NodeID, dgst v1.Hash) bool
	// Holders lists the nodes that hold dgst, complete or arriving (as
	// p2p.BlobState.Holders does). The caller does not keep or change the
	// slice.
	Holders(dgst v1.Hash) []p2p.NodeID
}

// Job is one prefetch job: node fetches the layers it lacks, by Deadline if
// it can, and pins all of them against garbage collection until Expires,
// when the pin lapses on its own (the prediction behind it expired). Jobs
// are plain values so that the leader can replicate them and a new leader
// carry on with them.
type Job struct {
	// ID is unique among the jobs in force: node, app and deadline.
	ID   string     `json:"id"`
	Node p2p.NodeID `json:"node"`
	// App is the app the job prepares, empty for a job of shared layers.
	App      AppID     `json:"app,omitempty"`
	Layers   []Layer   `json:"layers"`
	Deadline time.Time `json:"deadline"`
	Expires  time.Time `json:"expires"`
	// Reason is the model behind the job, "shared" for layers that many
	// predicted-hot images share, or "cover" for a background job.
	Reason string `json:"reason"`
	// Background: fetch only into free disk, evicting nothing for it, and
	// pin nothing; what a background job brings is the first to go when
	// the node needs room, until a start uses it.
	Background bool `json:"background,omitempty"`
}

// Bytes is the sum of the job's layer sizes, fetched or already held.
func (j Job) Bytes() int64 {
	var n int64
	for _, l := range j.Layers {
		n += l.Size
	}
	return n
}

// JobState is where a job is in its life.
type JobState string

// The states of a job: pending (issued, not started), running (fetching),
// done (its layers are held and pinned), failed (a layer could not be
// fetched or did not fit), expired (its pins lapsed).
const (
	JobPending JobState = "pending"
	JobRunning JobState = "running"
	JobDone    JobState = "done"
	JobFailed  JobState = "failed"
	JobExpired JobState = "expired"
)

// JobStates lists every state, in order.
var JobStates = []JobState{JobPending, JobRunning, JobDone, JobFailed, JobExpired}

// Planner turns predictions into prefetch jobs. Implementations are pure
// functions of their arguments and their configuration, so that whichever
// node leads plans the same.
type Planner interface {
	// Plan returns new jobs that ready the cluster for preds at now. active
	// are the jobs still in force (not expired); their pins count against
	// each node's budget and they are not issued again. Plan does not
	// retain its arguments.
	Plan(now time.Time, preds []Prediction, view ClusterView, active []Job) []Job
}

// Clock tells the time: the wall clock in a daemon, simulated time in a
// replay. The models, the planner and the Engine never read a clock: they
// are given the time (Engine.Step's now), so that the planning loop that
// owns the Clock decides whether time is real or simulated.
type Clock interface {
	Now() time.Time
}

// Minute returns the index of the minute t falls in, counted from the Unix
// epoch; models work in whole minutes.
func Minute(t time.Time) int64 {
	s := t.Unix()
	if s < 0 && s%60 != 0 {
		return s/60 - 1
	}
	return s / 60
}

// MinuteStart returns the start of minute m (see Minute), in UTC.
func MinuteStart(m int64) time.Time { return time.Unix(m*60, 0).UTC() }
