//go:build e2e

package cluster

import (
	"context"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// The burst benchmark's defaults; THAW_BURST_* override them.
const (
	defaultBurstSize  = 64 << 20 // S: a function image's layer; S/B = 10.7 s at the default B
	defaultBurstRate  = 50e6     // B, bits/s: at 100 Mbit/s, 16 nodes saturate the 2 CPUs
	defaultBurstNodes = "1,4,8,16"
)

// The peer-network issue's targets at the largest N.
const (
	targetP50    = 1.2 // completion time / (S/B)
	targetMax    = 1.5
	targetOrigin = 1.1 // origin bytes / S
)

// burstConfig is one benchmark run's parameters.
type burstConfig struct {
	Size      int64    // S, bytes of random data in the image's layer
	Rate      int64    // B, bits/s of every link, each direction
	Nodes     []int    // the N to measure
	PieceSize int64    // --piece-size, 0: the daemon's default
	Flags     []string // further flags for the thaw daemons (THAW_BURST_FLAGS), for tuning
	Modes     []string
	Results   string // where to write the report
	Logs      string // if set, daemons' logs are copied there
	AckPrio   bool   // THAW_BURST_ACKPRIO=1: ACKs ahead of data in every link's queue (a diagnostic)
}

func burstConfigFromEnv(t *testing.T) burstConfig {
	t.Helper()
	c := burstConfig{Size: defaultBurstSize, Rate: defaultBurstRate, Modes: []string{"thaw", "direct"}, Results: "RESULTS.md"}
	var err error
	if v := os.Getenv("THAW_BURST_SIZE"); v != "" {
		if c.Size, err = parseSize(v); err != nil {
			t.Fatalf("THAW_BURST_SIZE: %v", err)
		}
	}
	if v := os.Getenv("THAW_BURST_RATE"); v != "" {
		if c.Rate, err = parseRate(v); err != nil {
			t.Fatalf("THAW_BURST_RATE: %v", err)
		}
	}
	if v := os.Getenv("THAW_BURST_PIECE"); v != "" {
		if c.PieceSize, err = parseSize(v); err != nil {
			t.Fatalf("THAW_BURST_PIECE: %v", err)
		}
	}
	nodes := defaultBurstNodes
	if v := os.Getenv("THAW_BURST_NODES"); v != "" {
		nodes = v
	}
	for f := range strings.SplitSeq(nodes, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			t.Fatalf("THAW_BURST_NODES %q: want a comma-separated list of node counts", nodes)
		}
		c.Nodes = append(c.Nodes, n)
	}
	if v := os.Getenv("THAW_BURST_MODES"); v != "" {
		c.Modes = strings.Split(v, ",")
	}
	c.Flags = strings.Fields(os.Getenv("THAW_BURST_FLAGS"))
	if v := os.Getenv("THAW_BURST_RESULTS"); v != "" {
		c.Results = v
	}
	c.Logs = os.Getenv("THAW_BURST_LOGS")
	c.AckPrio = os.Getenv("THAW_BURST_ACKPRIO") == "1"
	return c
}

// parseSize reads 128MiB, 4MiB, 1GiB or a plain byte count.
func parseSize(s string) (int64, error) {
	units := []struct {
		suffix string
		mult   int64
	}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}}
	for _, u := range units {
		if v, ok := strings.CutSuffix(s, u.suffix); ok {
			n, err := strconv.ParseInt(v, 10, 64)
			return n * u.mult, err
		}
	}
	return strconv.ParseInt(s, 10, 64)
}

// parseRate reads 100mbit, 1gbit or plain bits/s.
func parseRate(s string) (int64, error) {
	ls := strings.ToLower(s)
	for _, u := range []struct {
		suffix string
		mult   float64
	}{{"gbit", 1e9}, {"mbit", 1e6}, {"kbit", 1e3}} {
		if v, ok := strings.CutSuffix(ls, u.suffix); ok {
			f, err := strconv.ParseFloat(v, 64)
			return int64(f * u.mult), err
		}
	}
	return strconv.ParseInt(s, 10, 64)
}

// TestBurstBenchmark: N nodes pull the same S-byte image at the same moment,
// every link at B, through the peer network (thaw) and straight from the
// registry (direct). It reports each node's completion time in units of
// S/B and the registry's bytes in units of S, and writes RESULTS.md.
func TestBurstBenchmark(t *testing.T) {
	if os.Getenv("THAW_BURST") != "1" {
		t.Skip("the burst benchmark takes several minutes; run it with THAW_BURST=1")
	}
	cfg := burstConfigFromEnv(t)
	maxN := slices.Max(cfg.Nodes)
	h := newHarness(t, harnessConfig{Nodes: maxN, Rate: cfg.Rate, ImageSize: cfg.Size, AckPriority: cfg.AckPrio})
	for _, n := range h.nw.nodes {
		countSYNs(t, n, peerPort)
	}
	pieceSize := cfg.PieceSize
	if pieceSize == 0 {
		pieceSize = daemonDefaultPieceSize(t)
	}
	var runs []*burstRun
	for _, n := range cfg.Nodes {
		for _, mode := range cfg.Modes {
			r := h.burst(t, cfg, mode, n)
			runs = append(runs, r)
			t.Logf("%s N=%d: p50 %.2f, max %.2f × S/B; origin %.2f × S; CPU ours %.0f%% mean, %.0f%% peak; machine %.0f%% mean, %.0f%% peak",
				mode, n, r.p50(), r.max(), r.originRatio(), 100*r.cpu.oursMean, 100*r.cpu.oursPeak, 100*r.cpu.mean, 100*r.cpu.peak)
		}
	}
	report := burstReport(cfg, h, pieceSize, runs)
	fmt.Println(report.table) // the markdown table, on the console as asked
	if err := writeResults(cfg.Results, report.full); err != nil {
		t.Errorf("write %s: %v", cfg.Results, err)
	} else {
		t.Logf("wrote %s", cfg.Results)
	}
}

// daemonDefaultPieceSize reads --piece-size's default from the daemon's help.
func daemonDefaultPieceSize(t *testing.T) int64 {
	t.Helper()
	out, _ := exec.Command(thawBin, "daemon", "--help").CombinedOutput()
	m := regexp.MustCompile(`--piece-size size .*\(default (\d+)\)`).FindSubmatch(out)
	if m == nil {
		return 0
	}
	n, _ := strconv.ParseInt(string(m[1]), 10, 64)
	return n
}

// burstRun is one burst of N nodes in one mode.
type burstRun struct {
	mode   string
	n      int
	unit   time.Duration // S/B
	size   int64         // S
	nodes  []nodeResult
	origin int64 // bytes the registry sent (its veth's frames)
	up     int64 // sum of thaw_fetched_bytes_total{source="upstream"}
	cpu    cpuStats
	leader string
	// seederDone is when the cluster's upstream bytes first reached S
	// (sampled every second): how long the origin took to hand over one copy.
	seederDone time.Duration
	// seeder is the node that read the whole layer from the origin (-1:
	// none did); seederUpBefore is what it had uploaded when it had read the
	// whole layer (sampled every second).
	seeder         int
	seederUpBefore int64
}

// nodeResult is one node's part of a burst.
type nodeResult struct {
	name      string
	dur       time.Duration
	firstByte time.Duration // first sample with more than 64 KiB fetched (a layer piece, not the config)
	conns     int64         // TCP connections the node accepted on its peer port
	m         metricSet
	err       error
}

func (r *burstRun) ratios() []float64 {
	var out []float64
	for _, n := range r.nodes {
		out = append(out, float64(n.dur)/float64(r.unit))
	}
	slices.Sort(out)
	return out
}

// p50 is the median (the lower middle one for an even N, as nearest-rank).
func (r *burstRun) p50() float64 {
	s := r.ratios()
	return s[(len(s)-1)/2]
}

func (r *burstRun) max() float64 { return slices.Max(r.ratios()) }

func (r *burstRun) originRatio() float64 { return float64(r.origin) / float64(r.size) }

func (r *burstRun) upstreamRatio() float64 { return float64(r.up) / float64(r.size) }

// burst runs one burst: fresh daemons on nodes 0..n-1, all prefetching the
// image at once.
func (h *harness) burst(t *testing.T, cfg burstConfig, mode string, n int) *burstRun {
	t.Helper()
	r := &burstRun{mode: mode, n: n, size: h.img.layerSize,
		unit: time.Duration(float64(h.img.layerSize*8) / float64(cfg.Rate) * float64(time.Second))}
	var extra []string
	if mode == "thaw" {
		if cfg.PieceSize > 0 {
			extra = append(extra, "--piece-size", strconv.FormatInt(cfg.PieceSize, 10))
		}
		extra = append(extra, cfg.Flags...)
	}
	var ds []*daemon
	switch mode {
	case "thaw":
		ds = h.startCluster(t, n, clusterOpts{extra: extra})
		if v, err := ds[0].peers(); err == nil {
			r.leader = v.Leader
		}
	case "direct":
		for i := range n {
			ds = append(ds, h.launchDaemon(t, i, daemonOpts{extra: extra}))
		}
		for _, d := range ds {
			d.waitReady(t)
		}
	default:
		t.Fatalf("THAW_BURST_MODES: unknown mode %q (thaw, direct)", mode)
	}

	for _, d := range ds {
		if _, err := synCount(d.node, peerPort); err != nil { // zero it
			t.Fatal(err)
		}
	}
	originBefore := h.reg.host.txBytes(t)
	ctx, stopSampling := context.WithCancel(context.Background())
	cpuDone := make(chan cpuStats, 1)
	pids := []int{os.Getpid(), h.reg.proc.Cmd.Process.Pid}
	for _, d := range ds {
		pids = append(pids, d.proc.Cmd.Process.Pid)
	}
	go func() { cpuDone <- sampleCPU(ctx, 500*time.Millisecond, pids) }()
	progress := newProgress(ds)
	var progressWG sync.WaitGroup
	res := prefetchAll(t, ds, h.img.ref, func(s time.Time) {
		progressWG.Go(func() { progress.run(ctx, s, time.Second) })
	})
	stopSampling()
	progressWG.Wait()
	r.cpu = <-cpuDone
	r.origin = h.reg.host.txBytes(t) - originBefore

	var err error
	for i, pr := range res {
		nr := nodeResult{name: pr.d.name, dur: pr.dur, err: pr.err, firstByte: progress.firstByte(i)}
		if pr.err != nil {
			t.Errorf("%s N=%d: %s: prefetch: %v\n%s", mode, n, pr.d.name, pr.err, pr.out)
		}
		pr.d.assertComplete(t, h.img)
		nr.m = pr.d.mustScrape(t)
		if nr.conns, err = synCount(pr.d.node, peerPort); err != nil {
			t.Error(err)
		}
		r.up += nr.m.upstreamBytes()
		r.nodes = append(r.nodes, nr)
	}
	r.seederDone = progress.upstreamReached(h.img.layerSize)
	r.seeder, r.seederUpBefore = progress.seederUploads(h.img.layerSize)

	if cfg.Logs != "" {
		progress.write(t, filepath.Join(cfg.Logs, fmt.Sprintf("%s-N%d", mode, n), "progress.csv"))
	}
	// Free the disk for the next run; keep the logs.
	stopAll(t, ds)
	for _, d := range ds {
		if cfg.Logs != "" {
			copyLog(t, d, filepath.Join(cfg.Logs, fmt.Sprintf("%s-N%d", mode, n)))
		}
		if err := os.RemoveAll(filepath.Join(d.dir, "data")); err != nil {
			t.Errorf("remove %s: %v", d.dir, err)
		}
	}
	return r
}

// stopAll stops daemons at once (SIGTERM, then SIGKILL after 10 s).
func stopAll(t *testing.T, ds []*daemon) {
	t.Helper()
	var wg sync.WaitGroup
	for _, d := range ds {
		wg.Go(func() { d.proc.Stop(t) })
	}
	wg.Wait()
}

func copyLog(t *testing.T, d *daemon, dir string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Errorf("logs: %v", err)
		return
	}
	src, err := os.Open(d.proc.Log)
	if err != nil {
		t.Errorf("logs: %v", err)
		return
	}
	defer src.Close()
	dst, err := os.Create(filepath.Join(dir, d.name+".log"))
	if err != nil {
		t.Errorf("logs: %v", err)
		return
	}
	defer dst.Close()
	if _, err := io.Copy(dst, src); err != nil {
		t.Errorf("logs: %v", err)
	}
}

// progress samples every daemon's fetched bytes during a burst.
type progress struct {
	ds      []*daemon
	mu      sync.Mutex
	samples [][]progressSample // per daemon
}

type progressSample struct {
	at       time.Duration // since the burst's start
	fetched  int64         // peer + upstream
	upstream int64
	uploaded int64
}

func newProgress(ds []*daemon) *progress {
	return &progress{ds: ds, samples: make([][]progressSample, len(ds))}
}

func (p *progress) run(ctx context.Context, start time.Time, every time.Duration) {
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		var wg sync.WaitGroup
		for i, d := range p.ds {
			wg.Go(func() {
				m, err := d.scrape()
				if err != nil {
					return
				}
				ms := metricSet(m)
				s := progressSample{at: time.Since(start), fetched: ms.peerBytes() + ms.upstreamBytes(), upstream: ms.upstreamBytes(), uploaded: ms.uploadBytes()}
				p.mu.Lock()
				p.samples[i] = append(p.samples[i], s)
				p.mu.Unlock()
			})
		}
		wg.Wait()
	}
}

// write saves the samples as CSV (node, seconds, fetched, upstream,
// uploaded bytes), for looking at a burst over time.
func (p *progress) write(t *testing.T, path string) {
	t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	var b strings.Builder
	b.WriteString("node,seconds,fetched,upstream,uploaded\n")
	for i, ss := range p.samples {
		for _, s := range ss {
			fmt.Fprintf(&b, "%s,%.2f,%d,%d,%d\n", p.ds[i].name, s.at.Seconds(), s.fetched, s.upstream, s.uploaded)
		}
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Errorf("progress: %v", err)
		return
	}
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		t.Errorf("progress: %v", err)
	}
}

// firstByte is the first sample at which daemon i had fetched a layer byte
// (more than the config blob), or -1.
func (p *progress) firstByte(i int) time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, s := range p.samples[i] {
		if s.fetched > 64<<10 {
			return s.at
		}
	}
	return -1
}

// upstreamReached is the first sampling round at which the daemons together
// had fetched at least size bytes from the origin, or -1.
func (p *progress) upstreamReached(size int64) time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	// Samples of one round are within milliseconds; sum per round index.
	rounds := 0
	for _, s := range p.samples {
		rounds = max(rounds, len(s))
	}
	for k := range rounds {
		var sum int64
		var at time.Duration
		for _, s := range p.samples {
			if k < len(s) {
				sum += s[k].upstream
				at = max(at, s[k].at)
			} else if len(s) > 0 {
				sum += s[len(s)-1].upstream
			}
		}
		if sum >= size {
			return at
		}
	}
	return -1
}

// seederUploads finds the first daemon that read size bytes from the
// origin and returns its index and what it had uploaded at the first sample
// at which it had them all; -1 if none did.
func (p *progress) seederUploads(size int64) (int, int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for i, ss := range p.samples {
		for _, s := range ss {
			if s.upstream >= size {
				return i, s.uploaded
			}
		}
	}
	return -1, 0
}

// cpuStats is CPU use during a burst, from /proc: the share of all cores
// busy (user, nice, system, irq, softirq, steal) on the whole machine, and
// the share used by the test's own processes (the daemons, the registry and
// the test binary; kernel work done in softirq context on their behalf is
// only in the machine's figure). Each has a mean over the burst and its
// highest sample; iowait is the machine's.
type cpuStats struct {
	mean, peak         float64 // machine
	oursMean, oursPeak float64 // the test's processes
	iowait             float64
}

type cpuTimes struct{ busy, iowait, total, ours uint64 }

func readCPU(pids []int) (cpuTimes, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return cpuTimes{}, err
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line) // cpu user nice system idle iowait irq softirq steal ...
	if len(f) < 9 || f[0] != "cpu" {
		return cpuTimes{}, fmt.Errorf("/proc/stat: unexpected first line %q", line)
	}
	var v [8]uint64
	for i := range v {
		v[i], _ = strconv.ParseUint(f[i+1], 10, 64)
	}
	c := cpuTimes{iowait: v[4]}
	for i, x := range v {
		c.total += x
		if i != 3 && i != 4 {
			c.busy += x
		}
	}
	for _, pid := range pids {
		c.ours += procTicks(pid)
	}
	return c, nil
}

// procTicks is a process's user and system time in clock ticks, the unit
// of /proc/stat; 0 once it is gone.
func procTicks(pid int) uint64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// The command name, in parentheses, may hold spaces.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(string(b[i+1:])) // state ppid ... utime(12) stime(13)
	if len(f) < 13 {
		return 0
	}
	u, _ := strconv.ParseUint(f[11], 10, 64)
	s, _ := strconv.ParseUint(f[12], 10, 64)
	return u + s
}

// sampleCPU samples /proc every interval until ctx ends. pids are the
// test's processes; they must outlive ctx (a process gone takes its ticks
// with it).
func sampleCPU(ctx context.Context, every time.Duration, pids []int) cpuStats {
	first, err := readCPU(pids)
	if err != nil {
		return cpuStats{mean: math.NaN()}
	}
	prev := first
	var st cpuStats
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			last, err := readCPU(pids)
			if err == nil && last.total > first.total {
				total := float64(last.total - first.total)
				st.mean = float64(last.busy-first.busy) / total
				st.iowait = float64(last.iowait-first.iowait) / total
				st.oursMean = float64(last.ours-first.ours) / total
			}
			return st
		case <-tick.C:
		}
		cur, err := readCPU(pids)
		if err != nil || cur.total <= prev.total {
			continue
		}
		total := float64(cur.total - prev.total)
		st.peak = max(st.peak, float64(cur.busy-prev.busy)/total)
		st.oursPeak = max(st.oursPeak, float64(cur.ours-prev.ours)/total)
		prev = cur
	}
}

// report is the benchmark's output.
type report struct {
	table string // the summary table alone
	full  string // RESULTS.md's generated part
}

func burstReport(cfg burstConfig, h *harness, pieceSize int64, runs []*burstRun) report {
	var tb strings.Builder
	fmt.Fprintf(&tb, "| N | mode | p50 / (S/B) | max / (S/B) | origin bytes / S (registry link) | origin bytes / S (thaw counters) | CPU, test's processes: mean / peak | CPU, machine: mean / peak | iowait |\n")
	fmt.Fprintf(&tb, "|---:|---|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, r := range runs {
		fmt.Fprintf(&tb, "| %d | %s | %.2f | %.2f | %.2f | %.2f | %.0f%% / %.0f%% | %.0f%% / %.0f%% | %.0f%% |\n",
			r.n, r.mode, r.p50(), r.max(), r.originRatio(), r.upstreamRatio(), 100*r.cpu.oursMean, 100*r.cpu.oursPeak, 100*r.cpu.mean, 100*r.cpu.peak, 100*r.cpu.iowait)
	}
	table := tb.String()

	var b strings.Builder
	unit := time.Duration(float64(h.img.layerSize*8) / float64(cfg.Rate) * float64(time.Second))
	nodes := make([]string, len(cfg.Nodes))
	for i, n := range cfg.Nodes {
		nodes[i] = strconv.Itoa(n)
	}
	fmt.Fprintf(&b, "# Burst benchmark: the peer network against every node pulling from the registry\n\n")
	fmt.Fprintf(&b, "Generated by `TestBurstBenchmark` (integration/cluster/bench_test.go) on %s.\n\n", time.Now().UTC().Format("2006-01-02 15:04 MST"))
	fmt.Fprintf(&b, "```\n%s\n```\n\n", burstCommand(cfg))
	fmt.Fprintf(&b, "- thaw: %s.\n", thawRev)
	fmt.Fprintf(&b, "- Machine: %d cores (%s), Linux %s; every node is a `thaw daemon` process in its own network namespace on one bridge, the registry (docker-registry %s) in another.\n", runtime.NumCPU(), cpuModel(), kernelRelease(), registryVersion())
	fmt.Fprintf(&b, "- Image: one uncompressed layer of random data, S = %d bytes (%s), plus a %d-byte config.\n", h.img.layerSize, mib(h.img.layerSize), h.img.sizes[h.img.blobs[0]])
	queue := "50 ms FIFO, on both ends of every veth: ACKs queue behind bulk data on a saturated uplink"
	if cfg.AckPrio {
		queue = "50 ms of queue, on both ends of every veth, with packets under 128 bytes (ACKs) ahead of bulk data (THAW_BURST_ACKPRIO=1, a diagnostic, not the benchmark's definition)"
	}
	fmt.Fprintf(&b, "- Links: B = %s each way on every link, registry's included (tc tbf, %s); S/B = %.2f s.\n", fmtRate(cfg.Rate), queue, unit.Seconds())
	flags := "other swarm settings at the daemon's defaults"
	if len(cfg.Flags) > 0 {
		flags = "further daemon flags: `" + strings.Join(cfg.Flags, " ") + "`"
	}
	fmt.Fprintf(&b, "- Piece size: %s%s; %s.\n", mib(pieceSize), map[bool]string{true: " (daemon default)", false: " (--piece-size)"}[cfg.PieceSize == 0], flags)
	fmt.Fprintf(&b, "- Node counts: %s; modes: thaw = daemons with cluster certificates forming one peer network (3 Raft voters, the rest clients); direct = daemons without --tls-dir, each pulling from the registry.\n", strings.Join(nodes, ", "))
	fmt.Fprintf(&b, "- Time: from the moment every `thaw prefetch --wait` was started (all at once, after the cluster formed) to each one's exit, divided by S/B. Origin bytes: what the registry's veth sent (frames, so TCP/IP headers included) and the sum of the daemons' `thaw_fetched_bytes_total{source=\"upstream\"}`, divided by S.\n")
	fmt.Fprintf(&b, "- CPU, as a share of both cores (100%% = both saturated), mean over the burst and highest 0.5 s sample: the test's processes (daemons, registry, test binary; user+system time from /proc/<pid>/stat) and the whole machine (user+system+irq+softirq from /proc/stat, which also holds the kernel's veth, bridge and tbf work in softirq and whatever else ran on the machine). iowait is the machine's.\n\n")
	b.WriteString(table)
	b.WriteString("\n")

	last := runs[len(runs)-1]
	for _, r := range runs {
		if r.mode == "thaw" && r.n == slices.Max(cfg.Nodes) {
			last = r
		}
	}
	if last.mode == "thaw" {
		ok := last.p50() <= targetP50 && last.max() <= targetMax && last.originRatio() <= targetOrigin
		fmt.Fprintf(&b, "Target of the peer-network issue at N = %d: p50 <= %.1f, max <= %.1f × S/B, origin <= %.1f × S. Measured: p50 %.2f, max %.2f, origin %.2f: **%s**.\n\n",
			last.n, targetP50, targetMax, targetOrigin, last.p50(), last.max(), last.originRatio(), map[bool]string{true: "met", false: "missed"}[ok])
	}

	fmt.Fprintf(&b, "## Per-node detail of the thaw runs\n\n")
	fmt.Fprintf(&b, "t/(S/B): completion; first: first layer byte on the node; from origin / from peers / uploaded in MiB; pieces: fetched from peers by result (lost: an endgame second copy that arrived after the first); piece s: mean seconds per piece fetched ok; refused: piece requests this node refused at its upload cap; conns: TCP connections the node accepted on its peer port (each a TLS handshake); origin streams: opened as seeder / as fallback.\n\n")
	for _, r := range runs {
		if r.mode != "thaw" {
			continue
		}
		fmt.Fprintf(&b, "### thaw, N = %d (leader %s", r.n, r.leader)
		if r.seederDone >= 0 {
			fmt.Fprintf(&b, "; origin had sent one copy after %.1f s = %.2f × S/B", r.seederDone.Seconds(), float64(r.seederDone)/float64(r.unit))
		}
		if r.seeder >= 0 {
			sn := r.nodes[r.seeder]
			total := sn.m.uploadBytes()
			fmt.Fprintf(&b, "; seeder %s uploaded %.2f × S in all, %.2f × S of it after it had the whole layer", sn.name,
				float64(total)/float64(r.size), float64(total-r.seederUpBefore)/float64(r.size))
		}
		fmt.Fprintf(&b, ")\n\n")
		fmt.Fprintf(&b, "| node | t/(S/B) | t (s) | first (s) | from origin | from peers | uploaded | pieces ok/lost/busy/stalled/error/bad | piece s | refused | conns | origin streams |\n")
		fmt.Fprintf(&b, "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---|\n")
		for _, n := range r.nodes {
			m := n.m
			ok := m.sum("thaw_p2p_piece_duration_seconds_count", `result="ok"`)
			sum := m.sum("thaw_p2p_piece_duration_seconds_sum", `result="ok"`)
			mean := 0.0
			if ok > 0 {
				mean = sum / ok
			}
			fmt.Fprintf(&b, "| %s | %.2f | %.1f | %.1f | %.1f | %.1f | %.1f | %.0f/%.0f/%.0f/%.0f/%.0f/%.0f | %.2f | %.0f | %d | %d / %d |\n",
				n.name, float64(n.dur)/float64(r.unit), n.dur.Seconds(), n.firstByte.Seconds(),
				mibf(m.upstreamBytes()), mibf(m.peerBytes()), mibf(m.uploadBytes()),
				ok, m.sum("thaw_p2p_piece_duration_seconds_count", `result="lost"`),
				m.sum("thaw_p2p_piece_duration_seconds_count", `result="busy"`),
				m.sum("thaw_p2p_piece_duration_seconds_count", `result="stalled"`),
				m.sum("thaw_p2p_piece_duration_seconds_count", `result="error"`),
				m.sum("thaw_p2p_piece_duration_seconds_count", `result="bad"`),
				mean, m.sum("thaw_p2p_uploads_refused_total"), n.conns,
				m.originFetches("seeder"), m.originFetches("fallback"))
		}
		b.WriteString("\n")
	}
	fmt.Fprintf(&b, "## Per-node times of the direct runs (t / (S/B))\n\n")
	for _, r := range runs {
		if r.mode != "direct" {
			continue
		}
		var parts []string
		for _, n := range r.nodes {
			parts = append(parts, fmt.Sprintf("%s %.2f", n.name, float64(n.dur)/float64(r.unit)))
		}
		fmt.Fprintf(&b, "- N = %d: %s\n", r.n, strings.Join(parts, ", "))
	}
	b.WriteString("\n")
	return report{table: table, full: b.String()}
}

func burstCommand(cfg burstConfig) string {
	var env []string
	env = append(env, "THAW_BURST=1")
	for _, k := range []string{"THAW_BURST_SIZE", "THAW_BURST_RATE", "THAW_BURST_NODES", "THAW_BURST_PIECE", "THAW_BURST_MODES", "THAW_BURST_FLAGS"} {
		if v := os.Getenv(k); v != "" {
			if strings.ContainsAny(v, " \t") {
				v = "'" + v + "'"
			}
			env = append(env, k+"="+v)
		}
	}
	return "sudo " + strings.Join(env, " ") + " go test -tags e2e -count=1 -run TestBurstBenchmark -v -timeout 60m ./integration/cluster/"
}

// analysisMarker separates RESULTS.md's generated part from notes written
// by hand below it, which a new run keeps.
const analysisMarker = "<!-- Everything below this line is written by hand and kept when the benchmark rewrites this file. -->"

func writeResults(path, generated string) error {
	notes := analysisMarker + "\n"
	if old, err := os.ReadFile(path); err == nil {
		if _, after, ok := strings.Cut(string(old), analysisMarker); ok {
			notes = analysisMarker + after
		}
	}
	return os.WriteFile(path, []byte(generated+notes), 0o644)
}

func mib(n int64) string   { return fmt.Sprintf("%.2f MiB", float64(n)/(1<<20)) }
func mibf(n int64) float64 { return float64(n) / (1 << 20) }
func kernelRelease() string {
	b, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	return strings.TrimSpace(string(b))
}
func registryVersion() string {
	out, _ := exec.Command("docker-registry", "--version").Output()
	f := strings.Fields(string(out))
	if len(f) == 0 {
		return "?"
	}
	return f[len(f)-1]
}

func cpuModel() string {
	b, _ := os.ReadFile("/proc/cpuinfo")
	for line := range strings.SplitSeq(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "unknown CPU"
}

// thawRev is thawRevision when the binary under test was built.
var thawRev string

// thawRevision says which code the binary under test was built from.
func thawRevision() string {
	if bin := os.Getenv("THAW_E2E_BIN"); bin != "" {
		return "the binary " + bin + " (THAW_E2E_BIN)"
	}
	rev, err := exec.Command("git", "rev-parse", "--short", "HEAD").Output()
	if err != nil {
		return "built from the working tree (no git revision)"
	}
	out := "built from commit " + strings.TrimSpace(string(rev))
	if st, err := exec.Command("git", "status", "--porcelain", "--untracked-files=no").Output(); err == nil && len(st) > 0 {
		out += " plus the working tree's uncommitted changes"
	}
	return out
}
