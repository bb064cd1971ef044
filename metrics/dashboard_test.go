package metrics_test

import (
	"encoding/json"
	"os"
	"regexp"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/thaw-dev/thaw/metrics"
)

// TestDashboardUsesRealMetrics: every thaw_* series the Grafana dashboard
// queries is one the daemon exports, so a renamed metric breaks this test and
// not the dashboard in production.
func TestDashboardUsesRealMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := metrics.NewPuller(reg)
	metrics.RegisterStore(reg, func() (int64, int64) { return 1, 2 })
	// Vectors only show up once they have a child.
	m.RequestDuration.WithLabelValues("blob", "GET", "200", "cache").Observe(1)
	m.PullDuration.WithLabelValues("upstream").Observe(1)
	m.Bytes.WithLabelValues("cache").Add(1)
	m.FetchedBytes.WithLabelValues("upstream").Add(1)
	m.CacheRequests.WithLabelValues("blob", "hit").Inc()
	m.UpstreamErrors.WithLabelValues("timeout").Inc()
	p := metrics.NewP2P(reg)
	p.PieceDuration.WithLabelValues("ok").Observe(1)
	p.OriginFetches.WithLabelValues("seeder").Inc()
	p.UploadBytes.WithLabelValues("node1").Add(1)
	pr := metrics.NewPredictor(reg)
	pr.Predictions.WithLabelValues("hint").Inc()
	pr.JobsIssued.WithLabelValues("manual").Inc()
	l := metrics.NewLazyload(reg)
	l.Mounts.WithLabelValues(metrics.MountOK).Inc()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	exported := map[string]bool{}
	for _, mf := range mfs {
		exported[mf.GetName()] = true
		if mf.GetType().String() == "HISTOGRAM" {
			exported[mf.GetName()+"_bucket"] = true
		}
	}

	b, err := os.ReadFile("dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Panels []struct {
			Title   string
			Targets []struct{ Expr string }
		}
	}
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("dashboard.json: %v", err)
	}
	if len(d.Panels) == 0 {
		t.Fatal("dashboard has no panels")
	}
	series := regexp.MustCompile(`thaw_[a-z0-9_]+`)
	for _, p := range d.Panels {
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			names := series.FindAllString(tg.Expr, -1)
			if len(names) == 0 {
				t.Errorf("panel %q queries no thaw metric: %s", p.Title, tg.Expr)
			}
			for _, n := range names {
				if !exported[n] {
					t.Errorf("panel %q queries %s, which the daemon does not export", p.Title, n)
				}
			}
		}
	}
}
