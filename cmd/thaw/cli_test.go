package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/thaw-dev/thaw/p2p"
	"github.com/thaw-dev/thaw/puller/api"
)

// thaw runs the CLI in-process with args and returns what it printed.
func thaw(ctx context.Context, args ...string) (string, error) {
	root := newRootCmd()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(args)
	err := root.ExecuteContext(ctx)
	return out.String(), err
}

// startDaemon runs `thaw daemon` in dataDir until the test ends or stop is
// called (which waits for the daemon to exit), and waits for its API socket
// to answer.
func startDaemon(t *testing.T, dataDir string, extra ...string) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	args := append([]string{"daemon", "--data-dir", dataDir, "--mirror-addr", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0",
		"--store-quota", "1GiB", "--log-level", "error"}, extra...)
	go func() {
		_, err := thaw(ctx, args...)
		done <- err
	}()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("daemon exited with %v", err)
				}
			case <-time.After(30 * time.Second):
				t.Error("daemon did not stop within 30s of its context ending")
			}
		})
	}
	t.Cleanup(stop)

	client := api.NewClient(filepath.Join(dataDir, "thaw.sock"))
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, err := client.Status(t.Context())
		if err == nil {
			return stop
		}
		select {
		case err := <-done:
			done <- err
			t.Fatalf("daemon exited before its API answered: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("daemon API not answering after 30s: %v", err)
		}
		time.Sleep(10 * time.Millisecond) // polling the socket with a deadline
	}
}

func pushImage(t *testing.T) (name.Reference, v1.Image) {
	t.Helper()
	srv := httptest.NewServer(registry.New(registry.Logger(slog.NewLogLogger(slog.DiscardHandler, 0))))
	t.Cleanup(srv.Close)
	ref, err := name.ParseReference(strings.TrimPrefix(srv.URL, "http://") + "/e2e/app:v1")
	if err != nil {
		t.Fatal(err)
	}
	img, err := random.Image(64<<10, 3)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img); err != nil {
		t.Fatal(err)
	}
	return ref, img
}

func mustContain(t *testing.T, what, out string, wants ...string) {
	t.Helper()
	for _, w := range wants {
		if !strings.Contains(out, w) {
			t.Fatalf("%s output does not contain %q:\n%s", what, w, out)
		}
	}
}

func TestCLIEndToEnd(t *testing.T) {
	clearThawEnv(t)
	t.Setenv("DOCKER_CONFIG", t.TempDir()) // no credentials from the machine
	ref, img := pushImage(t)
	dgst, _ := img.Digest()
	m, _ := img.Manifest()
	nBlobs := 1 + len(m.Layers)

	dataDir := t.TempDir()
	startDaemon(t, dataDir)
	ctx := t.Context()
	run := func(args ...string) string {
		t.Helper()
		out, err := thaw(ctx, append(args, "--data-dir", dataDir)...)
		if err != nil {
			t.Fatalf("thaw %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return out
	}
	status := func() api.Status {
		t.Helper()
		var st api.Status
		out := run("status", "--json")
		if err := json.Unmarshal([]byte(out), &st); err != nil {
			t.Fatalf("status --json is not JSON: %v\n%s", err, out)
		}
		return st
	}

	st := status()
	if st.Version != version || st.DataDir != dataDir || st.QuotaBytes != 1<<30 || st.Blobs != 0 || st.Images != 0 ||
		!strings.HasPrefix(st.MirrorAddr, "127.0.0.1:") || strings.HasSuffix(st.MirrorAddr, ":0") || strings.HasSuffix(st.MetricsAddr, ":0") {
		t.Fatalf("status of a new daemon = %+v", st)
	}
	mustContain(t, "status", run("status"), "thaw "+version, "data dir:  "+dataDir, "mirror:    "+st.MirrorAddr, "images:    0")
	if out := run("images"); strings.TrimSpace(out) != "IMAGE  DIGEST  RESOLVED" {
		t.Fatalf("images on a new daemon:\n%s", out)
	}

	// The mirror the status names answers as a registry.
	resp, err := http.Get("http://" + st.MirrorAddr + "/v2/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET mirror /v2/: %s", resp.Status)
	}

	out := run("prefetch", "--wait", ref.String())
	mustContain(t, "prefetch --wait", out,
		fmt.Sprintf("%s: %d blobs,", ref.Name(), nBlobs), "(0 already on the node)", "digest "+dgst.String())
	if n := strings.Count(out, " done\n"); n != nBlobs {
		t.Fatalf("prefetch --wait printed %d done blob lines, want %d:\n%s", n, nBlobs, out)
	}
	mustContain(t, "second prefetch --wait", run("prefetch", "--wait", ref.String()), fmt.Sprintf("(%d already on the node)", nBlobs))

	mustContain(t, "images", run("images"), ref.Name(), dgst.String()[:19])
	out = run("images", "--blobs")
	wantDigests := []string{dgst.String(), m.Config.Digest.String()}
	for _, l := range m.Layers {
		wantDigests = append(wantDigests, l.Digest.String())
	}
	for _, d := range wantDigests {
		mustContain(t, "images --blobs", out, d[:19])
	}
	if n := strings.Count(out, "complete"); n != nBlobs+1 { // and the manifest
		t.Fatalf("images --blobs lists %d complete blobs, want %d:\n%s", n, nBlobs+1, out)
	}
	var blobs []api.Blob
	if err := json.Unmarshal([]byte(run("images", "--blobs", "--json")), &blobs); err != nil || len(blobs) != nBlobs+1 {
		t.Fatalf("images --blobs --json = %d blobs, %v", len(blobs), err)
	}

	// A background prefetch shows in the status until done.
	out = run("prefetch", ref.String())
	mustContain(t, "prefetch", out, "prefetch job 3 queued")
	deadline := time.Now().Add(30 * time.Second)
	for {
		st = status()
		if len(st.Jobs) == 3 && st.Jobs[2].State != "running" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("background job not done after 30s: %+v", st.Jobs)
		}
		time.Sleep(10 * time.Millisecond) // polling with a deadline
	}
	if st.Jobs[2].State != "done" || st.Images != 1 || st.Blobs != nBlobs+1 {
		t.Fatalf("status after the prefetches = %+v", st)
	}

	// A failing prefetch fails the command with the daemon's reason.
	out, err = thaw(ctx, "prefetch", "--wait", ref.Context().Tag("missing").String(), "--data-dir", dataDir)
	if err == nil || !strings.Contains(err.Error(), "not found") {
		t.Fatalf("prefetch of a missing tag = %v\n%s", err, out)
	}

	mustContain(t, "gc --target 0", run("gc", "--target", "0"), fmt.Sprintf("removed %d blobs,", nBlobs+1), "store now 0 B")
	if st = status(); st.Blobs != 0 || st.StoreBytes != 0 || st.Images != 1 {
		t.Fatalf("status after gc = %+v", st)
	}
	mustContain(t, "version", run("version"), "thaw "+version)
}

func TestCLIWithoutDaemon(t *testing.T) {
	clearThawEnv(t)
	dataDir := t.TempDir()
	for _, args := range [][]string{{"status"}, {"images"}, {"gc"}, {"prefetch", "registry.example/a:v1"}} {
		_, err := thaw(t.Context(), append(args, "--data-dir", dataDir)...)
		if err == nil || !strings.Contains(err.Error(), "no thaw daemon answers at "+filepath.Join(dataDir, "thaw.sock")) {
			t.Fatalf("thaw %v without a daemon = %v", args, err)
		}
	}
}

// A second daemon on the same data directory refuses to start rather than
// taking the socket from the first.
func TestSecondDaemonRefused(t *testing.T) {
	clearThawEnv(t)
	t.Setenv("DOCKER_CONFIG", t.TempDir())
	dataDir := t.TempDir()
	startDaemon(t, dataDir)
	_, err := thaw(t.Context(), "daemon", "--data-dir", dataDir, "--mirror-addr", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0", "--store-quota", "1GiB", "--log-level", "error")
	if err == nil || !strings.Contains(err.Error(), "another thaw daemon is running") {
		t.Fatalf("second daemon = %v", err)
	}
	if _, err := thaw(t.Context(), "status", "--data-dir", dataDir); err != nil {
		t.Fatalf("the first daemon stopped answering: %v", err)
	}
}

func TestDemo(t *testing.T) {
	clearThawEnv(t)
	t.Setenv("DOCKER_CONFIG", t.TempDir())
	out, err := thaw(t.Context(), "demo", "--layer-mib", "1")
	if err != nil {
		t.Fatalf("demo: %v\n%s", err, out)
	}
	mustContain(t, "demo", out, "thaw status: 5 blobs", "thaw_fetched_bytes_total{source=\"upstream\"}", "thaw_stale_tag_resolutions_total 1")
	// Each pull's blobs come from where the story says: the registry, then
	// the node's store, also with the registry gone.
	pulls := []struct{ title, resolved, source string }{
		{"pull 1:", "resolved: upstream", "upstream"},
		{"pull 2:", "resolved: upstream", "cache"},
		{"pull 3:", "resolved: stale", "cache"},
	}
	for i, p := range pulls {
		_, section, ok := strings.Cut(out, p.title)
		if !ok {
			t.Fatalf("demo output has no %q:\n%s", p.title, out)
		}
		if i+1 < len(pulls) {
			section, _, _ = strings.Cut(section, pulls[i+1].title)
		}
		mustContain(t, p.title, section, p.resolved)
		var blobs int
		for _, line := range strings.Split(section, "\n") {
			if f := strings.Fields(line); len(f) > 2 && f[0] == "blob" {
				blobs++
				if f[2] != p.source {
					t.Errorf("%s blob line %q: source %q, want %q", p.title, line, f[2], p.source)
				}
			}
		}
		if blobs != 4 {
			t.Errorf("%s shows %d blobs, want 4 (config and 3 layers):\n%s", p.title, blobs, section)
		}
	}
}

// TestQuorumWarnings: `thaw peers` warns when a voter is down, says how
// many more failures the cluster can take, and says when its majority is
// gone; clients that are down and healthy voters raise nothing.
func TestQuorumWarnings(t *testing.T) {
	m := func(id string, voter, alive bool) p2p.Member {
		return p2p.Member{ID: p2p.NodeID(id), Voter: voter, Alive: alive}
	}
	if w := quorumWarnings([]p2p.Member{m("a", true, true), m("b", true, true), m("c", true, true), m("d", false, false)}); w != nil {
		t.Fatalf("healthy voters, a client down: %q", w)
	}
	w := quorumWarnings([]p2p.Member{m("a", true, true), m("b", true, false), m("c", true, true)})
	if len(w) != 1 || !strings.Contains(w[0], "voter(s) b not alive: 2 of 3 voters up, 2 needed") || !strings.Contains(w[0], "1 more voter failure(s)") || !strings.Contains(w[0], "thaw peers remove") {
		t.Fatalf("one of three voters down: %q", w)
	}
	w = quorumWarnings([]p2p.Member{m("a", true, true), m("b", true, false), m("c", true, false)})
	if len(w) != 1 || !strings.Contains(w[0], "lost its majority") {
		t.Fatalf("two of three voters down: %q", w)
	}
}
