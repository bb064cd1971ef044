//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"
)

// activity is GET /api/v1/activity's answer (predictor/live.Activity).
type activity struct {
	Minute int64 `json:"minute"`
	Apps   []struct {
		App    string `json:"app"`
		Image  string `json:"image"`
		Starts int    `json:"starts"`
	} `json:"apps"`
}

// TestContainerStartsFeedPredictor: a daemon following the real
// containerd's event stream counts each container start (function from
// the thaw.dev/function label, else the image) for the predictor, and the
// counts reach the cluster's activity records.
func TestContainerStartsFeedPredictor(t *testing.T) {
	reg := startRegistry(t)
	ctrd := startContainerd(t)
	d := startThaw(t, reg.addr, "--containerd-events", ctrd.sock)
	hostsDir := writeHostsDir(t, "registry.example.com", reg.addr, reg.addr, d.mirrorAddr)
	img := pushTestImage(t, reg.addr)
	if _, err := ctrd.pull(t, hostsDir, img.ref); err != nil {
		t.Fatalf("pull: %v", err)
	}
	for i := range 2 {
		out := ctrd.ctr(t, "run", "--rm", "--label", "thaw.dev/function=hello", img.ref, fmt.Sprintf("thaw-e2e-fn-%d-%d", i, time.Now().UnixNano()))
		if !strings.Contains(out, img.output) {
			t.Fatalf("run %d printed %q", i, out)
		}
	}
	out := ctrd.run(t, img.ref) // no label: the image names the function

	d.proc.WaitFor(t, "container starts counted", 2*time.Minute, func() error {
		m := d.metrics(t)
		if got := m[`thaw_predictor_events_total{source="containerd"}`]; got != 3 {
			return fmt.Errorf("thaw_predictor_events_total{source=containerd} = %v, want 3 (ran %q)", got, out)
		}
		ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
		defer cancel()
		js, err := runCmd(ctx, cleanEnv(), thawBin, "activity", "--json", "--data-dir", d.dataDir, "--api", d.api)
		if err != nil {
			return err
		}
		var acts []activity
		if err := json.Unmarshal([]byte(js), &acts); err != nil {
			return err
		}
		starts := map[string]int{}
		for _, a := range acts {
			for _, c := range a.Apps {
				if c.Image != img.ref {
					return fmt.Errorf("app %s with image %q, want %q", c.App, c.Image, img.ref)
				}
				starts[c.App] += c.Starts
			}
		}
		if starts["hello"] != 2 || starts[img.ref] != 1 {
			return fmt.Errorf("the cluster's activity counts starts %v, want hello: 2, %s: 1", starts, img.ref)
		}
		return nil
	})
}
