//go:build e2e

package lazy

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/thaw-dev/thaw/integration/testenv"
)

// The benchmark's defaults; THAW_LAZY_* override them.
const (
	defaultBenchRate = 200e6 // bits/s of the registry's link
	// defaultBenchQuiet is case (b')'s --background-quiet: 0, a fill that
	// does not yield to start-up reads, to show what yielding buys.
	defaultBenchQuiet = "0"
)

// coldStart is one cold start: pull and run to the ready line on a fresh
// node (new containerd, new thaw, empty stores).
type coldStart struct {
	name        string
	pull, ready time.Duration // from the pull request
	linkBytes   int64         // bytes the registry sent over the link until ready
	imageBytes  int64
	remote, all int // lazily mounted snapshots / all
	load        string
	spread      string // every round's time to ready, for the report
	demand      int64  // bytes thaw fetched because a reader waited for them (-1: not through thaw's ranges)
}

// TestLazyBenchmark measures cold starts of the same image on the same link
// three ways and writes RESULTS.md: (a) the plain image pulled through
// thaw's mirror and unpacked by containerd, (b) the eStargz image through
// thaw's snapshotter and mirror, (c) the eStargz image through the same
// snapshotter reading the registry directly (--snapshotter-mirror pointing
// at it: the stargz snapshotter without thaw's mirror and store).
func TestLazyBenchmark(t *testing.T) {
	if os.Getenv("THAW_LAZY_BENCH") == "" {
		t.Skip("THAW_LAZY_BENCH=1 runs the lazy loading benchmark (several minutes)")
	}
	rate := int64(defaultBenchRate)
	if v := os.Getenv("THAW_LAZY_RATE"); v != "" {
		r, err := strconv.ParseFloat(v, 64)
		if err != nil {
			t.Fatalf("THAW_LAZY_RATE %q: want bits per second, e.g. 200e6", v)
		}
		rate = int64(r)
	}
	img, prefix := testenv.BenchPythonFromEnv(t, "THAW_LAZY_PYTHON")
	l := newLink(t, rate)
	reg := startRegistry(t, l)
	plain, esgz := reg+"/pybench:plain", reg+"/pybench:esgz"
	plainSize := img.Push(t, plain)
	recorder := startContainerd(t, filepath.Join(shortDir(t), "none.sock"))
	convOut, startup, convTime := convert(t, plain, esgz, recorder.Sock)
	recorder.Proc.Stop(t)
	esgzSize := imageSize(t, esgz)
	t.Logf("plain %d bytes, eStargz %d bytes, %d start-up files; thaw convert took %s:\n%s", plainSize, esgzSize, startup, convTime.Round(time.Second), convOut)

	quiet := defaultBenchQuiet
	if v := os.Getenv("THAW_LAZY_QUIET"); v != "" {
		quiet = v
	}
	rounds := 3
	if v := os.Getenv("THAW_LAZY_ROUNDS"); v != "" {
		if rounds, _ = strconv.Atoi(v); rounds < 1 {
			t.Fatalf("THAW_LAZY_ROUNDS %q: want a count >= 1", v)
		}
	}
	// The cases take turns, round after round, so that the machine's load
	// (shared cores) weighs on each alike; the report shows medians.
	runs := make([][]*coldStart, 4)
	for range rounds {
		runs[0] = append(runs[0], benchCold(t, l, reg, "(a) plain image, pulled through thaw, then run", plain, plainSize, "overlayfs", false))
		runs[1] = append(runs[1], benchCold(t, l, reg, "(b) eStargz through thaw's snapshotter and mirror (defaults)", esgz, esgzSize, "stargz", false))
		runs[2] = append(runs[2], benchCold(t, l, reg, "(b') as (b), thaw daemon --background-quiet "+quiet, esgz, esgzSize, "stargz", false, "--background-quiet", quiet))
		runs[3] = append(runs[3], benchCold(t, l, reg, "(c) eStargz through the stargz snapshotter, straight from the registry", esgz, esgzSize, "stargz", true))
	}
	for _, rs := range runs[1:] {
		for _, r := range rs {
			if r.remote != r.all || r.all == 0 {
				t.Errorf("%s: %d of %d snapshots lazily mounted", r.name, r.remote, r.all)
			}
		}
	}
	report := benchReport(rate, prefix, plainSize, esgzSize, startup, convTime, rounds, median(runs))
	t.Log("\n" + report)
	if err := os.WriteFile("RESULTS.md", []byte(report), 0o644); err != nil {
		t.Fatal(err)
	}
}

func benchCold(t *testing.T, l *link, reg, name, ref string, size int64, snapshotter string, direct bool, extra ...string) *coldStart {
	t.Helper()
	if direct {
		extra = append(extra, "--snapshotter-mirror", "http://"+reg)
	}
	n := newNode(t, reg, extra...)
	mirror := n.thaw.mirror
	if direct {
		mirror = reg
	}
	load := loadAvg()
	before := l.rxBytes(t)
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	if err := n.ctrd.Pull(ctx, ref, mirror, snapshotter); err != nil {
		t.Fatal(err)
	}
	pulled := time.Since(start)
	readyAt, _ := n.ctrd.Run(t, ref, snapshotter, readyLine)
	moved := l.rxBytes(t) - before
	r := &coldStart{name: name, pull: pulled, ready: readyAt.Sub(start), linkBytes: moved, imageBytes: size, load: load, demand: -1}
	if snapshotter == "stargz" && !direct {
		r.demand = int64(n.thaw.scrape(t)[`thaw_lazy_fetched_bytes_total{kind="demand"}`])
	}
	if snapshotter == "stargz" {
		r.remote, r.all = n.ctrd.RemoteSnapshots(t)
	}
	t.Logf("%s: pull %s, ready %s, %d bytes over the link (image %d)", name, r.pull.Round(time.Millisecond), r.ready.Round(time.Millisecond), moved, size)
	n.thaw.proc.Stop(t)
	n.ctrd.Proc.Stop(t)
	return r
}

// median returns, for each case, a coldStart with the median of each
// measure over its rounds, and the spread of the time to ready.
func median(cases [][]*coldStart) []*coldStart {
	var out []*coldStart
	for _, rs := range cases {
		m := *rs[0]
		pick := func(get func(*coldStart) float64) float64 {
			v := make([]float64, len(rs))
			for i, r := range rs {
				v[i] = get(r)
			}
			slices.Sort(v)
			return v[len(v)/2]
		}
		m.pull = time.Duration(pick(func(r *coldStart) float64 { return float64(r.pull) }))
		m.ready = time.Duration(pick(func(r *coldStart) float64 { return float64(r.ready) }))
		m.linkBytes = int64(pick(func(r *coldStart) float64 { return float64(r.linkBytes) }))
		m.demand = int64(pick(func(r *coldStart) float64 { return float64(r.demand) }))
		var readies, loads []string
		for _, r := range rs {
			readies = append(readies, fmt.Sprintf("%.2f", r.ready.Seconds()))
			loads = append(loads, r.load)
		}
		m.spread = strings.Join(readies, ", ")
		m.load = strings.Join(loads, ", ")
		out = append(out, &m)
	}
	return out
}

func benchReport(rate int64, prefix string, plainSize, esgzSize int64, startup int, conv time.Duration, rounds int, runs []*coldStart) string {
	a, c := runs[0], runs[len(runs)-1]
	var s strings.Builder
	fmt.Fprintf(&s, "# Lazy loading benchmark\n\nGenerated by:\n\n    sudo THAW_LAZY_BENCH=1 THAW_LAZY_RATE=%d THAW_LAZY_ROUNDS=%d go test -tags e2e -count=1 -run TestLazyBenchmark -v -timeout 60m ./integration/lazy/\n\n(make bench-lazy runs it with the defaults.)\n\n", rate, rounds)
	fmt.Fprintf(&s, "Image: the Python prefix %s (interpreter, standard library, site-packages, and the shared libraries ldd finds), "+
		"%.1f MiB compressed plain, %.1f MiB as eStargz (`thaw convert --record`, the %d files the workload opened until ready put first; conversion with recording took %s). "+
		"Workload: `python3 -c 'import json, ssl, sqlite3, decimal, email.mime.text, http.client, yaml, click, attr, urllib3; print(\"ready\")'`.\n\n",
		prefix, mibf(plainSize), mibf(esgzSize), startup, conv.Round(time.Second))
	fmt.Fprintf(&s, "Link: the registry (docker-registry 2.8) runs in a network namespace behind a veth shaped with tc tbf at %s; "+
		"containerd 1.6.20, runc and thaw run in the root namespace. Each run is a cold start on a fresh node "+
		"(new containerd and thaw, empty stores); the four cases take turns, %d rounds, and the table shows medians. Time is from the pull request to the workload's ready line; bytes are "+
		"what crossed the link (frames, headers included) until then, background fetches included. "+
		"Machine: %d cores shared with other work (the 1-minute load average at each start is shown).\n\n", fmtRate(rate), rounds, runtime.NumCPU())
	s.WriteString("| cold start | pull | to ready | vs (a) | bytes over the link before ready | of the image | of which thaw fetched on demand | every round's time to ready | load avg |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- |\n")
	for _, r := range runs {
		demand := "-"
		if r.demand >= 0 {
			demand = fmt.Sprintf("%.1f MiB (%.0f%%)", mibf(r.demand), 100*float64(r.demand)/float64(r.imageBytes))
		}
		fmt.Fprintf(&s, "| %s | %.2f s | %.2f s | %.3f | %.1f MiB | %.0f%% | %s | %s | %s |\n", r.name, r.pull.Seconds(), r.ready.Seconds(),
			r.ready.Seconds()/a.ready.Seconds(), mibf(r.linkBytes), 100*float64(r.linkBytes)/float64(r.imageBytes), demand, r.spread, r.load)
	}
	fmt.Fprintf(&s, "\nTargets of the lazy loading issue, from this run:\n\n")
	for _, b := range runs[1 : len(runs)-1] {
		tag, _, _ := strings.Cut(b.name, " ")
		fmt.Fprintf(&s, "- %s: vs plain %.3f (target <= 0.167); vs the stargz snapshotter straight from the registry %.2fx (target <= 1.3x); "+
			"bytes over the link before ready %.0f%% of the image (target <= 25%%)\n",
			tag, b.ready.Seconds()/a.ready.Seconds(), b.ready.Seconds()/c.ready.Seconds(), 100*float64(b.linkBytes)/float64(b.imageBytes))
	}
	return s.String()
}

func mibf(n int64) float64 { return float64(n) / (1 << 20) }

func fmtRate(bits int64) string {
	if bits >= 1e9 {
		return fmt.Sprintf("%g Gbit/s", float64(bits)/1e9)
	}
	return fmt.Sprintf("%g Mbit/s", float64(bits)/1e6)
}

func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return "?"
	}
	return f[0]
}
