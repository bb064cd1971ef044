package cluster

import (
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the node's Prometheus metrics. Unregistered when the Config
// has no Registerer; they are still updated.
type metrics struct {
	leaderChanges  prometheus.Counter
	commitDuration prometheus.Histogram
}

func newMetrics(reg prometheus.Registerer, n *Node) (*metrics, error) {
	m := &metrics{
		leaderChanges: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "thaw_raft_leader_changes_total",
			Help: "Times this node saw the Raft leader change to another node, or to one after none.",
		}),
		commitDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "thaw_raft_commit_duration_seconds",
			Help:    "Time from a leader's Raft Apply to the command being committed and applied.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14), // 0.5ms .. 4s
		}),
	}
	if reg == nil {
		return m, nil
	}
	isLeader := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "thaw_raft_is_leader",
		Help: "1 while this node is the Raft leader, else 0.",
	}, func() float64 {
		if n.isLeader() {
			return 1
		}
		return 0
	})
	members := &membersCollector{n: n, desc: prometheus.NewDesc(
		"thaw_cluster_members",
		"Cluster members by role (voter, client) and liveness as the leader sees it; only the leader exports it.",
		[]string{"role", "alive"}, nil,
	)}
	var errs []error
	for _, c := range []prometheus.Collector{m.leaderChanges, m.commitDuration, isLeader, members} {
		if err := reg.Register(c); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("register cluster metrics: %w", err)
	}
	return m, nil
}

// membersCollector counts members at scrape time from the leader's view.
// Followers and clients export nothing: only the leader knows liveness.
type membersCollector struct {
	n    *Node
	desc *prometheus.Desc
}

func (c *membersCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *membersCollector) Collect(ch chan<- prometheus.Metric) {
	if !c.n.isLeader() {
		return
	}
	type key struct {
		role  string
		alive bool
	}
	counts := map[key]int{{"voter", true}: 0, {"voter", false}: 0, {"client", true}: 0, {"client", false}: 0}
	for _, m := range c.n.leaderMembers() {
		role := "client"
		if m.Voter {
			role = "voter"
		}
		counts[key{role, m.Alive}]++
	}
	for k, v := range counts {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(v), k.role, fmt.Sprint(k.alive))
	}
}
