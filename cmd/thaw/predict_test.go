package main

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/thaw-dev/thaw/predictor/live"
	"github.com/thaw-dev/thaw/puller/api"
)

// TestEventsSurviveShutdown: events a node took just before it stopped
// (still in its per-minute intake, not yet flushed) reach the cluster's
// activity before the cluster stops, and are there after a restart.
func TestEventsSurviveShutdown(t *testing.T) {
	dir := t.TempDir()
	stop := startDaemon(t, dir)
	activity(t, dir) // the node has joined its one-node cluster
	now := time.Now().UTC()
	body := map[string]any{"events": []map[string]any{{
		"function": "resize", "image": "registry.example/fn/resize:v1", "count": 7,
		"start": now.Truncate(time.Minute).Format(time.RFC3339),
	}}}
	var ack json.RawMessage
	if err := api.NewClient(filepath.Join(dir, "thaw.sock")).Post(t.Context(), "/api/v1/events", body, &ack); err != nil {
		t.Fatal(err)
	}
	stop()

	startDaemon(t, dir)
	acts := activity(t, dir)
	var got int
	for _, a := range acts {
		for _, c := range a.Apps {
			if c.App == "resize" {
				got += c.Invocations
			}
		}
	}
	if got != 7 {
		t.Fatalf("after a restart the cluster's activity holds %d invocations of the 7 taken just before the stop: %s", got, fmt.Sprint(acts))
	}
}

// activity reads `thaw activity`, waiting up to 20 s for the node to have
// joined its cluster.
func activity(t *testing.T, dir string) []live.Activity {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		out, err := thaw(t.Context(), "activity", "--data-dir", dir, "--json")
		if err == nil {
			var acts []live.Activity
			if err := json.Unmarshal([]byte(out), &acts); err != nil {
				t.Fatalf("%v: %s", err, out)
			}
			return acts
		}
		if time.Now().After(deadline) {
			t.Fatalf("thaw activity: %v", err)
		}
		time.Sleep(50 * time.Millisecond) // polling with a deadline
	}
}
