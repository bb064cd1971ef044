//go:build e2e

package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/thaw-dev/thaw/integration/testenv"
)

// lazyTools are what the lazy cluster tests need beyond requiredTools.
var lazyTools = []string{"containerd", "ctr", "runc", "containerd-shim-runc-v2", "ldd", "/dev/fuse"}

// lazyImage is a Python image pushed plain and converted to eStargz with
// its start-up files first (`thaw convert --record`).
type lazyImage struct {
	plain, esgz testImage // layerSize: the sum of the layers
	startup     int       // files recorded
	convert     time.Duration
}

// pushLazyImage pushes img plain to the harness's registry and converts it.
// The workload is recorded in a containerd of the root namespace, which
// reaches the registry over the bridge.
func (h *harness) pushLazyImage(t *testing.T, img testenv.PyImage) lazyImage {
	t.Helper()
	plain, esgz := h.reg.addr+"/py:plain", h.reg.addr+"/py:esgz"
	img.Push(t, plain)
	recorder := testenv.StartContainerd(t, "", filepath.Join(h.dir, "none.sock"))
	out, startup, took := testenv.Convert(t, thawBin, plain, esgz, recorder.Sock)
	recorder.Proc.Stop(t)
	li := lazyImage{plain: imageBlobs(t, plain), esgz: imageBlobs(t, esgz), startup: startup, convert: took}
	t.Logf("image: %.1f MiB plain, %.1f MiB as eStargz in %d layers; %s", mibf(li.plain.layerSize), mibf(li.esgz.layerSize), len(li.esgz.blobs)-1, strings.TrimSpace(out))
	return li
}

// imageBlobs reads ref's manifest: its config and layers, and their sizes.
func imageBlobs(t *testing.T, ref string) testImage {
	t.Helper()
	m, dg := testenv.Manifest(t, ref)
	ti := testImage{ref: ref, digest: dg.String(), sizes: map[string]int64{}}
	ti.blobs = append(ti.blobs, m.Config.Digest.String())
	ti.sizes[m.Config.Digest.String()] = m.Config.Size
	for _, l := range m.Layers {
		ti.blobs = append(ti.blobs, l.Digest.String())
		ti.sizes[l.Digest.String()] = l.Size
		ti.layerSize += l.Size
	}
	return ti
}

// lazyNode is a cluster daemon with the embedded stargz snapshotter and a
// containerd in the same node namespace that uses it.
type lazyNode struct {
	d    *daemon
	ctrd *testenv.Containerd
}

// startLazyNodes starts a cluster of n daemons (startCluster), each with
// --snapshotter-socket and its cluster certificate, and a containerd in each
// node's namespace (nsenter --net, so runc sees the root mount namespace)
// whose proxy snapshotter is that daemon's. The test's pulls reach each
// node's mirror on that namespace's loopback.
func (h *harness) startLazyNodes(t *testing.T, n int, extra []string) []*lazyNode {
	t.Helper()
	// Registered first, so it runs after the daemons stop: FUSE mounts a
	// killed daemon left would keep the harness's directory.
	t.Cleanup(func() { testenv.UnmountUnder(h.dir) })
	sockDir := testenv.ShortDir(t, "ths")
	sock := func(i int) string { return filepath.Join(sockDir, fmt.Sprintf("n%d.sock", i)) }
	ds := h.startCluster(t, n, clusterOpts{extra: extra, nodeExtra: func(i int) []string {
		return []string{"--snapshotter-socket", sock(i)}
	}})
	ns := make([]*lazyNode, n)
	for i, d := range ds {
		c := testenv.StartContainerd(t, d.node.name, sock(i))
		c.Dial = netnsDialer(d.node.name)
		ns[i] = &lazyNode{d: d, ctrd: c}
	}
	return ns
}

// stopLazyNodes stops the containerds, then the daemons (which unmount
// their layers).
func stopLazyNodes(t *testing.T, ns []*lazyNode) {
	t.Helper()
	for _, n := range ns {
		n.ctrd.Proc.Stop(t)
	}
	for _, n := range ns {
		n.d.proc.Stop(t)
	}
}

// netnsDialer dials from network namespace ns: the socket is made on a
// thread switched to it and stays there.
func netnsDialer(ns string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		var c net.Conn
		err := inNetns(ns, func() (err error) {
			c, err = (&net.Dialer{}).DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}
}

// linkCounter reads a counter of h's veth, bridge end: "tx" is what h
// received (its downlink), "rx" what it sent.
func (h *host) linkCounter(dir string) (int64, error) {
	b, err := os.ReadFile("/sys/class/net/" + h.hveth + "/statistics/" + dir + "_bytes")
	if err != nil {
		return 0, err
	}
	return strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
}

// lazyNodeResult is one node's cold start.
type lazyNodeResult struct {
	name        string
	pull, ready time.Duration // from the common start to the pull's end / the ready line
	downReady   int64         // bytes the node's downlink carried until its ready line
	downTotal   int64         // ... until every node's store held the whole image
	upTotal     int64         // bytes the node sent (to peers) until then
	demand      int64         // thaw_lazy_fetched_bytes_total{kind="demand"}: ranges readers waited for
	peer, orig  int64         // thaw_fetched_bytes_total by source, at the end
	remote, all int           // lazily mounted committed snapshots / all (stargz)
	fuse        int           // FUSE mounts under the node's directory
	out         string        // the container's output
	err         error
}

// lazyBurstRun is one cold start of every node at the same moment.
type lazyBurstRun struct {
	name                     string
	snapshotter              string
	img                      testImage
	nodes                    []lazyNodeResult
	originReady, originTotal int64         // bytes the registry sent until the last ready line / until every store held the image
	complete                 time.Duration // until every store held the whole image
	load                     string        // 1-minute load average at the start
}

func (r *lazyBurstRun) readies() []float64 {
	v := make([]float64, len(r.nodes))
	for i, n := range r.nodes {
		v[i] = n.ready.Seconds()
	}
	slices.Sort(v)
	return v
}

// lazyBurst has every node pull img into snapshotter through its own
// mirror and run it, all starting at the same moment, and measures each
// node's time to the ready line and the bytes its link and the registry's
// carried until then and until every store holds the whole image. It fails
// the test if a node cannot run the image.
func (h *harness) lazyBurst(t *testing.T, ns []*lazyNode, img testImage, snapshotter, name string) *lazyBurstRun {
	t.Helper()
	r := &lazyBurstRun{name: name, snapshotter: snapshotter, img: img, nodes: make([]lazyNodeResult, len(ns)), load: loadAvg()}
	down0 := make([]int64, len(ns))
	up0 := make([]int64, len(ns))
	for i, n := range ns {
		down0[i] = mustCounter(t, n.d.node, "tx")
		up0[i] = mustCounter(t, n.d.node, "rx")
	}
	origin0 := h.reg.host.txBytes(t)
	originAtReady := make([]int64, len(ns))
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	var wg sync.WaitGroup
	start := time.Now()
	for i, n := range ns {
		wg.Go(func() {
			res := &r.nodes[i]
			res.name = n.d.name
			if res.err = n.ctrd.Pull(ctx, img.ref, mirrorAddr, snapshotter); res.err != nil {
				return
			}
			res.pull = time.Since(start)
			var readyAt time.Time
			if readyAt, res.out, res.err = n.ctrd.RunErr(ctx, img.ref, snapshotter, testenv.ReadyLine); res.err != nil {
				return
			}
			res.ready = readyAt.Sub(start)
			// Read at the container's exit, a few ms after its ready line.
			down, err1 := n.d.node.linkCounter("tx")
			orig, err2 := h.reg.host.linkCounter("rx")
			if res.err = errors.Join(err1, err2); res.err != nil {
				return
			}
			res.downReady, originAtReady[i] = down-down0[i], orig-origin0
		})
	}
	wg.Wait()
	for _, res := range r.nodes {
		if res.err != nil {
			t.Fatalf("%s: %v", res.name, res.err)
		}
	}
	r.originReady = slices.Max(originAtReady)

	// The rest of each blob arrives in the background (the peer network
	// for a cluster); every store ends with the whole image.
	for _, n := range ns {
		n.d.proc.WaitFor(t, "holding every blob of "+img.ref, 10*time.Minute, func() error {
			out, err := n.d.cliErr(30*time.Second, "images", "--blobs", "--json")
			if err != nil {
				return err
			}
			var list []storeBlob
			if err := json.Unmarshal([]byte(out), &list); err != nil {
				return fmt.Errorf("thaw images --blobs --json: %w", err)
			}
			complete := map[string]bool{}
			for _, b := range list {
				complete[b.Digest] = b.Complete
			}
			for _, dg := range img.blobs {
				if !complete[dg] {
					return fmt.Errorf("blob %s not complete yet", dg)
				}
			}
			return nil
		})
	}
	r.complete = time.Since(start)
	r.originTotal = h.reg.host.txBytes(t) - origin0
	for i, n := range ns {
		res := &r.nodes[i]
		res.downTotal = mustCounter(t, n.d.node, "tx") - down0[i]
		res.upTotal = mustCounter(t, n.d.node, "rx") - up0[i]
		m := n.d.mustScrape(t)
		res.demand = int64(m.sum("thaw_lazy_fetched_bytes_total", `kind="demand"`))
		res.peer, res.orig = m.peerBytes(), m.upstreamBytes()
		n.d.assertComplete(t, img)
		if snapshotter == "stargz" {
			res.remote, res.all = n.ctrd.RemoteSnapshots(t)
			res.fuse = testenv.FUSEMounts(t, n.d.dir)
		}
		t.Logf("%s %s: pull %.2fs, ready %.2fs; downlink %.1f MiB before ready, %.1f MiB in all; uplink %.1f MiB; thaw: %.1f MiB on demand, %.1f MiB from peers, %.1f MiB from the origin; %d of %d snapshots remote, %d FUSE mounts",
			name, res.name, res.pull.Seconds(), res.ready.Seconds(), mibf(res.downReady), mibf(res.downTotal), mibf(res.upTotal),
			mibf(res.demand), mibf(res.peer), mibf(res.orig), res.remote, res.all, res.fuse)
	}
	t.Logf("%s: the registry sent %.1f MiB before the last ready line (%.2fs), %.1f MiB until every store held the image (%.2fs); image %.1f MiB",
		name, mibf(r.originReady), r.readies()[len(ns)-1], mibf(r.originTotal), r.complete.Seconds(), mibf(img.layerSize))
	return r
}

func mustCounter(t *testing.T, h *host, dir string) int64 {
	t.Helper()
	n, err := h.linkCounter(dir)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	if f := strings.Fields(string(b)); len(f) > 0 {
		return f[0]
	}
	return "?"
}

// needLazyTools fails the test when containerd, runc or FUSE are missing
// (integration/e2e-deps.sh installs them).
func needLazyTools(t *testing.T) {
	t.Helper()
	if missing := testenv.Missing(lazyTools...); len(missing) > 0 {
		t.Fatalf("missing %s; install them with integration/e2e-deps.sh", strings.Join(missing, ", "))
	}
}

// TestClusterLazy: four nodes of a cluster, each a containerd using its
// daemon's embedded stargz snapshotter, start the same eStargz image at the
// same moment. Every node runs the workload with every layer mounted
// lazily (remote snapshots, FUSE mounts, no failed lazy mount), fetched
// the ranges it waited for on demand, and ends with the whole image in its
// store, the rest of each blob brought by the background fill through the
// peer network, so that the registry sends less than a copy per node. The
// same nodes, fresh, then start the plain image at once through the peer
// network. Four nodes: three voters and a client, as TestClusterBurst; more
// would measure the two cores, not the network.
func TestClusterLazy(t *testing.T) {
	needLazyTools(t)
	const nodes = 4
	h := newHarness(t, harnessConfig{Nodes: nodes, Rate: 1e9, ImageSize: 64 << 10})
	img := h.pushLazyImage(t, testenv.SmallPython())
	layers := len(img.esgz.blobs) - 1

	ns := h.startLazyNodes(t, nodes, nil)
	r := h.lazyBurst(t, ns, img.esgz, "stargz", "eStargz")
	var peers int64
	for i, res := range r.nodes {
		if !strings.Contains(res.out, testenv.ReadyLine) {
			t.Errorf("%s: the workload printed %q, not %q", res.name, res.out, testenv.ReadyLine)
		}
		if res.all != layers || res.remote != res.all {
			t.Errorf("%s: %d of %d committed snapshots remote (lazily mounted), want %d of %d", res.name, res.remote, res.all, layers, layers)
		}
		if res.fuse < layers {
			t.Errorf("%s: %d FUSE mounts under its daemon's directory, want one per layer (%d)", res.name, res.fuse, layers)
		}
		m := ns[i].d.mustScrape(t)
		if ok := m.sum("thaw_lazy_mounts_total", `result="ok"`); ok < float64(layers) {
			t.Errorf("%s: thaw_lazy_mounts_total{result=ok} = %v, want %d", res.name, ok, layers)
		}
		if e := m.sum("thaw_lazy_mounts_total", `result="error"`); e != 0 {
			t.Errorf("%s: thaw_lazy_mounts_total{result=error} = %v, want 0", res.name, e)
		}
		if res.demand == 0 || res.demand >= img.esgz.layerSize {
			t.Errorf("%s: thaw fetched %d bytes on demand for an image of %d: want some, and less than the image", res.name, res.demand, img.esgz.layerSize)
		}
		peers += res.peer
	}
	if peers == 0 {
		t.Error("no node got any byte from a peer: the background fill did not go through the peer network")
	}
	if r.originTotal >= int64(nodes)*img.esgz.layerSize {
		t.Errorf("the registry sent %.1f MiB for %d nodes and an image of %.1f MiB: a copy per node, the peer network carried nothing",
			mibf(r.originTotal), nodes, mibf(img.esgz.layerSize))
	}
	stopLazyNodes(t, ns)

	ns = h.startLazyNodes(t, nodes, nil)
	p := h.lazyBurst(t, ns, img.plain, "overlayfs", "plain")
	for _, res := range p.nodes {
		if !strings.Contains(res.out, testenv.ReadyLine) {
			t.Errorf("%s: the plain image's workload printed %q", res.name, res.out)
		}
	}
	stopLazyNodes(t, ns)
}

// The lazy cluster benchmark's defaults; THAW_CLUSTER_LAZY_* override them.
const (
	defaultLazyRate   = 100e6 // bits/s of every link
	defaultLazyNodes  = 4
	defaultLazyRounds = 3
)

// TestClusterLazyBenchmark: N nodes of a cluster start the same Python
// image at the same moment, as eStargz through each daemon's snapshotter
// and as the plain image through the peer network, fresh nodes each time,
// the cases taking turns round after round. It writes LAZY_RESULTS.md.
func TestClusterLazyBenchmark(t *testing.T) {
	if os.Getenv("THAW_CLUSTER_LAZY") != "1" {
		t.Skip("THAW_CLUSTER_LAZY=1 runs the lazy loading cluster benchmark (several minutes)")
	}
	needLazyTools(t)
	rate, nodes, rounds := int64(defaultLazyRate), defaultLazyNodes, defaultLazyRounds
	var err error
	if v := os.Getenv("THAW_CLUSTER_LAZY_RATE"); v != "" {
		if rate, err = parseRate(v); err != nil {
			t.Fatalf("THAW_CLUSTER_LAZY_RATE: %v", err)
		}
	}
	if v := os.Getenv("THAW_CLUSTER_LAZY_NODES"); v != "" {
		if nodes, err = strconv.Atoi(v); err != nil || nodes < 1 {
			t.Fatalf("THAW_CLUSTER_LAZY_NODES %q: want a node count", v)
		}
	}
	if v := os.Getenv("THAW_CLUSTER_LAZY_ROUNDS"); v != "" {
		if rounds, err = strconv.Atoi(v); err != nil || rounds < 1 {
			t.Fatalf("THAW_CLUSTER_LAZY_ROUNDS %q: want a count >= 1", v)
		}
	}
	py, prefix := testenv.BenchPythonFromEnv(t, "THAW_CLUSTER_LAZY_PYTHON")
	results := "LAZY_RESULTS.md"
	if v := os.Getenv("THAW_CLUSTER_LAZY_RESULTS"); v != "" {
		results = v
	}

	h := newHarness(t, harnessConfig{Nodes: nodes, Rate: rate, ImageSize: 64 << 10})
	img := h.pushLazyImage(t, py)
	var esgz, plain []*lazyBurstRun
	for range rounds {
		for _, c := range []struct {
			img         testImage
			snapshotter string
			name        string
			runs        *[]*lazyBurstRun
		}{
			{img.esgz, "stargz", "eStargz, through each node's snapshotter (ranges from the origin, the rest through peers)", &esgz},
			{img.plain, "overlayfs", "plain, pulled through thaw (the peer network) and unpacked by containerd", &plain},
		} {
			ns := h.startLazyNodes(t, nodes, nil)
			r := h.lazyBurst(t, ns, c.img, c.snapshotter, c.name)
			stopLazyNodes(t, ns)
			if c.snapshotter == "stargz" {
				for _, res := range r.nodes {
					if res.remote != res.all || res.all == 0 {
						t.Errorf("%s: %d of %d snapshots lazily mounted", res.name, res.remote, res.all)
					}
				}
			}
			*c.runs = append(*c.runs, r)
		}
	}
	report := lazyReport(rate, nodes, rounds, prefix, img, esgz, plain)
	t.Log("\n" + report)
	if err := writeResults(results, report); err != nil {
		t.Fatal(err)
	}
}

// lazyCase is one case's measures over its rounds: the median of each.
type lazyCase struct {
	name                          string
	ready, readyMax               float64 // s: median over rounds of the nodes' median / slowest time to ready
	pull                          float64 // s: the nodes' median pull
	downReady, downTotal, upTotal int64   // per node, median
	originReady, originTotal      int64
	complete                      float64
	size                          int64
	spread, load                  string
}

func summarize(runs []*lazyBurstRun) lazyCase {
	med := func(v []float64) float64 { // the mean of the middle two of an even count
		slices.Sort(v)
		return (v[(len(v)-1)/2] + v[len(v)/2]) / 2
	}
	perRun := func(get func(*lazyBurstRun) float64) float64 {
		v := make([]float64, len(runs))
		for i, r := range runs {
			v[i] = get(r)
		}
		return med(v)
	}
	perNode := func(get func(lazyNodeResult) float64) func(*lazyBurstRun) float64 {
		return func(r *lazyBurstRun) float64 {
			v := make([]float64, len(r.nodes))
			for i, n := range r.nodes {
				v[i] = get(n)
			}
			return med(v)
		}
	}
	c := lazyCase{name: runs[0].name, size: runs[0].img.layerSize}
	c.ready = perRun(perNode(func(n lazyNodeResult) float64 { return n.ready.Seconds() }))
	c.readyMax = perRun(func(r *lazyBurstRun) float64 { return slices.Max(r.readies()) })
	c.pull = perRun(perNode(func(n lazyNodeResult) float64 { return n.pull.Seconds() }))
	c.downReady = int64(perRun(perNode(func(n lazyNodeResult) float64 { return float64(n.downReady) })))
	c.downTotal = int64(perRun(perNode(func(n lazyNodeResult) float64 { return float64(n.downTotal) })))
	c.upTotal = int64(perRun(perNode(func(n lazyNodeResult) float64 { return float64(n.upTotal) })))
	c.originReady = int64(perRun(func(r *lazyBurstRun) float64 { return float64(r.originReady) }))
	c.originTotal = int64(perRun(func(r *lazyBurstRun) float64 { return float64(r.originTotal) }))
	c.complete = perRun(func(r *lazyBurstRun) float64 { return r.complete.Seconds() })
	var spread, load []string
	for _, r := range runs {
		var s []string
		for _, v := range r.readies() {
			s = append(s, fmt.Sprintf("%.1f", v))
		}
		spread = append(spread, strings.Join(s, ", "))
		load = append(load, r.load)
	}
	c.spread, c.load = strings.Join(spread, " / "), strings.Join(load, ", ")
	return c
}

func lazyReport(rate int64, nodes, rounds int, prefix string, img lazyImage, esgz, plain []*lazyBurstRun) string {
	e, p := summarize(esgz), summarize(plain)
	var s strings.Builder
	fmt.Fprintf(&s, "# Lazy loading on the multi-node harness\n\nGenerated by `TestClusterLazyBenchmark` (integration/cluster/lazy_test.go) on %s:\n\n", time.Now().UTC().Format("2006-01-02 15:04 MST"))
	fmt.Fprintf(&s, "    sudo THAW_CLUSTER_LAZY=1 THAW_CLUSTER_LAZY_RATE=%d THAW_CLUSTER_LAZY_NODES=%d THAW_CLUSTER_LAZY_ROUNDS=%d go test -tags e2e -count=1 -run TestClusterLazyBenchmark -v -timeout 60m ./integration/cluster/\n\n", rate, nodes, rounds)
	fmt.Fprintf(&s, "Image: the Python prefix %s (interpreter, standard library, site-packages and the shared libraries ldd finds), "+
		"%.1f MiB compressed plain, %.1f MiB as eStargz in %d layers (`thaw convert --record`: the %d files the workload opened until ready first; %s with recording, over the shaped link). "+
		"Workload: `python3 -c 'import json, ssl, sqlite3, decimal, email.mime.text, http.client, yaml, click, attr, urllib3; print(\"ready\")'`.\n\n",
		prefix, mibf(img.plain.layerSize), mibf(img.esgz.layerSize), len(img.esgz.blobs)-1, img.startup, img.convert.Round(time.Second))
	fmt.Fprintf(&s, "Network: the harness of this package: %d node namespaces and the registry's (docker-registry 2.8) on a bridge, every veth shaped with tc tbf to %s each way. "+
		"Each node runs `thaw daemon` in cluster mode (cluster certificates; three voters and clients) with `--snapshotter-socket`, and containerd 1.6.20 in the node's namespace (nsenter --net) with that socket as its stargz proxy snapshotter. "+
		"Every case starts on fresh nodes (new daemons, containerds and stores); all nodes pull and run at the same moment; the cases take turns, %d rounds, and the table shows medians. "+
		"Time is from the pull request to the workload's ready line. Bytes are frames on the veths (headers included): a node's downlink until its ready line and until every store held the whole image; the registry's uplink until the last node's ready line and until then. "+
		"Machine: %d cores shared with other work (1-minute load average at each start shown).\n\n",
		nodes, fmtRate(rate), rounds, runtime.NumCPU())
	s.WriteString("| cold start on every node at once | pull (median node) | to ready: median node | to ready: slowest node | vs plain (median) | node downlink before ready | node downlink in all | node uplink in all | registry sent before the last ready | registry sent in all | every store whole after | every round's times to ready | load avg |\n")
	s.WriteString("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n")
	for _, c := range []lazyCase{e, p} {
		fmt.Fprintf(&s, "| %s | %.2f s | %.2f s | %.2f s | %.3f | %.1f MiB (%.0f%%) | %.1f MiB | %.1f MiB | %.1f MiB (%.2f copies) | %.1f MiB (%.2f copies) | %.1f s | %s | %s |\n",
			c.name, c.pull, c.ready, c.readyMax, c.ready/p.ready, mibf(c.downReady), 100*float64(c.downReady)/float64(c.size), mibf(c.downTotal), mibf(c.upTotal),
			mibf(c.originReady), float64(c.originReady)/float64(c.size), mibf(c.originTotal), float64(c.originTotal)/float64(c.size), c.complete, c.spread, c.load)
	}
	fmt.Fprintf(&s, "\nPer node, every round:\n\n| case | round | node | pull | ready | downlink before ready | downlink in all | uplink | thaw on demand | thaw from peers | thaw from the origin | lazily mounted |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n")
	for _, runs := range [][]*lazyBurstRun{esgz, plain} {
		for i, r := range runs {
			tag, _, _ := strings.Cut(r.name, ",")
			for _, n := range r.nodes {
				lazy := "-"
				if r.snapshotter == "stargz" {
					lazy = fmt.Sprintf("%d of %d", n.remote, n.all)
				}
				fmt.Fprintf(&s, "| %s | %d | %s | %.2f s | %.2f s | %.1f MiB | %.1f MiB | %.1f MiB | %.1f MiB | %.1f MiB | %.1f MiB | %s |\n",
					tag, i+1, n.name, n.pull.Seconds(), n.ready.Seconds(), mibf(n.downReady), mibf(n.downTotal), mibf(n.upTotal), mibf(n.demand), mibf(n.peer), mibf(n.orig), lazy)
			}
		}
	}
	s.WriteString("\n")
	return s.String()
}
