package live

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/thaw-dev/thaw/p2p"
	"github.com/thaw-dev/thaw/predictor"
)

// Kinds of the records the predictor keeps in the cluster's replicated
// state (p2p.RecordStore). Everything the leader's planning needs is there,
// so a new leader carries on where the old one stopped.
const (
	// kindActivity: one node's Activity of one minute, until the leader
	// merges it into the minute's kindMinute records. Key
	// "<minute>/<node>/<n>".
	kindActivity = "predictor.activity"
	// kindMinute: the cluster's Activity of one minute, in chunks. Key
	// "<minute, 12 digits>/<chunk>". Kept for Config.History.
	kindMinute = "predictor.minute"
	// kindHint: a Hint, key the function.
	kindHint = "predictor.hint"
	// kindJob: a predictor.Job, key its ID, Node its node.
	kindJob = "predictor.job"
	// kindJobState: a JobStatus, key the job's ID, written by its node.
	kindJobState = "predictor.jobstate"
	// kindNode: a NodeStatus, key the node: its disk budget and use.
	kindNode = "predictor.node"
)

// chunkApps is the most apps one activity record carries, which keeps a
// record well under the cluster's value limit.
const chunkApps = 1000

// JobStatus is what a node reports of one of its jobs.
type JobStatus struct {
	State predictor.JobState `json:"state"`
	Error string             `json:"error,omitempty"`
	// Fetched is the bytes the job brought (layers already present count
	// nothing).
	Fetched int64     `json:"fetched,omitempty"`
	At      time.Time `json:"at"`
}

// NodeStatus is what a node reports of its disk each minute.
type NodeStatus struct {
	Budget int64 `json:"budget"`
	Used   int64 `json:"used"`
}

// JobView is a job with its state, as GET /api/v1/jobs answers.
type JobView struct {
	predictor.Job
	Status JobStatus `json:"status"`
}

func record(kind, key string, node p2p.NodeID, expires time.Time, v any) (p2p.Record, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return p2p.Record{}, fmt.Errorf("encode %s record %s: %w", kind, key, err)
	}
	return p2p.Record{Kind: kind, Key: key, Node: node, Expires: expires, Value: b}, nil
}

func decodeRecord[T any](r p2p.Record) (T, error) {
	var v T
	if err := json.Unmarshal(r.Value, &v); err != nil {
		return v, fmt.Errorf("decode %s record %s: %w", r.Kind, r.Key, err)
	}
	return v, nil
}

// activityRecords splits act into records of at most chunkApps apps.
func activityRecords(kind string, keyOf func(chunk int) string, node p2p.NodeID, expires time.Time, act Activity) ([]p2p.Record, error) {
	var out []p2p.Record
	for i := 0; i == 0 || i*chunkApps < len(act.Apps); i++ {
		part := Activity{Minute: act.Minute, Apps: act.Apps[i*chunkApps : min(len(act.Apps), (i+1)*chunkApps)]}
		r, err := record(kind, keyOf(i), node, expires, part)
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, nil
}

func minuteKey(m int64, chunk int) string { return fmt.Sprintf("%012d/%d", m, chunk) }
