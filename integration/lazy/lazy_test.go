//go:build e2e

package lazy

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/thaw-dev/thaw/integration/testenv"
)

// funcRate shapes the link of the functional tests: fast enough to keep
// them short, a real link all the same.
const funcRate = 1e9

// fixture is a registry behind a shaped link holding the small Python image
// plain and as eStargz (start-up files first), shared by the tests.
type fixture struct {
	link         *link
	reg          string
	plain, esgz  string
	plainSize    int64
	esgzSize     int64
	convertLines string
}

// newFixture builds the fixture inside t, so the link and registry live as
// long as t (one top-level test runs every functional case).
func newFixture(t *testing.T) *fixture {
	t.Helper()
	l := newLink(t, funcRate)
	f := &fixture{link: l, reg: startRegistry(t, l)}
	img := smallPython()
	f.plain, f.esgz = f.reg+"/py:plain", f.reg+"/py:esgz"
	f.plainSize = img.Push(t, f.plain)
	// The workload is recorded in a containerd of its own.
	recorder := startContainerd(t, filepath.Join(shortDir(t), "none.sock"))
	var recorded int
	f.convertLines, recorded, _ = convert(t, f.plain, f.esgz, recorder.Sock)
	// The interpreter, its libraries and the modules the script imports.
	if recorded < 20 {
		t.Fatalf("thaw convert --record recorded %d files, want the interpreter, its libraries and modules (20 or more):\n%s", recorded, f.convertLines)
	}
	recorder.Proc.Stop(t)
	f.esgzSize = imageSize(t, f.esgz)
	t.Logf("image: %d bytes plain, %d as eStargz; %s", f.plainSize, f.esgzSize, strings.TrimSpace(f.convertLines))
	return f
}

// node is a containerd and a thaw daemon whose snapshotter it uses.
type node struct {
	thaw *thaw
	ctrd *ctrd
}

func newNode(t *testing.T, reg string, extra ...string) *node {
	t.Helper()
	dir := shortDir(t)
	t.Cleanup(func() { testenv.UnmountUnder(dir) }) // after thaw stops (cleanups run last first)
	d := startThaw(t, filepath.Join(dir, "data"), filepath.Join(dir, "sn.sock"), reg, extra...)
	return &node{thaw: d, ctrd: startContainerd(t, d.socket)}
}

func TestLazyLoading(t *testing.T) {
	f := newFixture(t)
	t.Run("EStargzMountsLazilyThroughThaw", func(t *testing.T) { testEStargzLazy(t, f) })
	t.Run("PlainImageFallsBackToFullPull", func(t *testing.T) { testPlainFallback(t, f) })
	t.Run("TamperedTOCIsRefused", func(t *testing.T) { testTamperedTOC(t, f) })
	t.Run("SnapshotterKilled", func(t *testing.T) { testSnapshotterKilled(t, f) })
}

// testTamperedTOC: the manifest names a TOC digest that is not the layer's
// (a layer swapped or corrupted at the registry). The snapshotter refuses
// to mount that layer, says why, and containerd pulls it whole (verified
// by its digest as any layer); the other layer is still mounted lazily.
func testTamperedTOC(t *testing.T, f *fixture) {
	bad := f.reg + "/py:esgz-badtoc"
	tamperTOCAnnotation(t, f.esgz, bad, 1)
	n := newNode(t, f.reg)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if err := n.ctrd.Pull(ctx, bad, n.thaw.mirror, "stargz"); err != nil {
		t.Fatal(err)
	}
	n.ctrd.Run(t, bad, "stargz", readyLine)
	remote, all := n.ctrd.RemoteSnapshots(t)
	if all != 2 || remote != 1 {
		t.Errorf("%d of %d snapshots remote, want 1 of 2 (the layer with the wrong TOC digest unpacked)", remote, all)
	}
	if e := n.thaw.scrape(t)[`thaw_lazy_mounts_total{result="error"}`]; e < 1 {
		t.Errorf("thaw_lazy_mounts_total{result=error} = %v", e)
	}
	if lines := grepLog(n.thaw.proc.Log, "layer not mounted lazily", "invalid stargz layer"); len(lines) == 0 {
		t.Errorf("thaw's log does not say why the layer was refused:\n%s", testenv.Tail(n.thaw.proc.Log, 20))
	}
}

// testEStargzLazy: the eStargz image runs with its layers mounted over FUSE
// by thaw's snapshotter, every range read went through thaw's mirror, and
// fewer bytes than the image crossed the link before the workload was
// ready. A silent fallback to a full pull fails every one of these checks.
func testEStargzLazy(t *testing.T, f *fixture) {
	// The background fill is slowed down so that what crosses the link
	// before the container is done is what it read.
	n := newNode(t, f.reg, "--background-rate", "64KiB")
	before := f.link.rxBytes(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if err := n.ctrd.Pull(ctx, f.esgz, n.thaw.mirror, "stargz"); err != nil {
		t.Fatal(err)
	}
	_, out := n.ctrd.Run(t, f.esgz, "stargz", readyLine)
	moved := f.link.rxBytes(t) - before

	remote, all := n.ctrd.RemoteSnapshots(t)
	if all != 2 || remote != all {
		t.Errorf("%d of %d committed snapshots are remote (lazily mounted), want 2 of 2", remote, all)
	}
	if mounts := fuseMounts(t, n.thaw.dataDir); mounts < 2 {
		t.Errorf("%d FUSE mounts under thaw's snapshotter root, want one per layer (2)", mounts)
	}
	m := n.thaw.scrape(t)
	if ok := m[`thaw_lazy_mounts_total{result="ok"}`]; ok < 2 {
		t.Errorf("thaw_lazy_mounts_total{result=ok} = %v, want 2", ok)
	}
	if e := m[`thaw_lazy_mounts_total{result="error"}`]; e != 0 {
		t.Errorf("thaw_lazy_mounts_total{result=error} = %v, want 0", e)
	}
	if m[`thaw_lazy_prioritized_fetch_seconds_count`] < 1 {
		t.Error("no prioritized region was measured")
	}
	served := 0.0
	for k, v := range m {
		if strings.HasPrefix(k, "thaw_served_bytes_total") {
			served += v
		}
	}
	if served == 0 {
		t.Error("thaw's mirror served no bytes: the snapshotter's reads did not go through it")
	}
	demand := m[`thaw_lazy_fetched_bytes_total{kind="demand"}`]
	if demand == 0 || int64(demand) >= f.esgzSize/2 {
		t.Errorf("thaw fetched %.0f bytes on demand for an image of %d: want some, and less than half", demand, f.esgzSize)
	}
	if moved >= f.esgzSize/2 {
		t.Errorf("%d bytes crossed the link by the time the container exited; the image is %d: not lazy", moved, f.esgzSize)
	}
	t.Logf("ready; %d bytes crossed the link (image %d); thaw fetched %.0f on demand, its mirror served %.0f; output: %s", moved, f.esgzSize, demand, served, strings.TrimSpace(out))
}

// testPlainFallback: a layer that is not eStargz cannot be mounted lazily;
// containerd pulls it whole (through the mirror, as for any image) and the
// container runs all the same.
func testPlainFallback(t *testing.T, f *fixture) {
	n := newNode(t, f.reg)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if err := n.ctrd.Pull(ctx, f.plain, n.thaw.mirror, "stargz"); err != nil {
		t.Fatal(err)
	}
	n.ctrd.Run(t, f.plain, "stargz", readyLine)
	remote, all := n.ctrd.RemoteSnapshots(t)
	if remote != 0 || all != 2 {
		t.Errorf("%d of %d snapshots remote, want 0 of 2 (unpacked locally)", remote, all)
	}
	m := n.thaw.scrape(t)
	if e := m[`thaw_lazy_mounts_total{result="error"}`]; e < 1 {
		t.Errorf("thaw_lazy_mounts_total{result=error} = %v: the failed lazy mount was not counted", e)
	}
	if ok := m[`thaw_lazy_mounts_total{result="ok"}`]; ok != 0 {
		t.Errorf("thaw_lazy_mounts_total{result=ok} = %v for a plain image", ok)
	}
	var fetched float64
	for k, v := range m {
		if strings.HasPrefix(k, "thaw_fetched_bytes_total") {
			fetched += v
		}
	}
	if int64(fetched) < f.plainSize {
		t.Errorf("thaw fetched %.0f bytes, the plain image is %d: the full pull did not go through the mirror", fetched, f.plainSize)
	}
}

// testSnapshotterKilled: the daemon dies (SIGKILL) with layers mounted.
// containerd keeps answering, calls to the dead snapshotter fail instead of
// hanging, a restarted daemon cleans up after the dead one and containers
// run lazily again.
func testSnapshotterKilled(t *testing.T, f *fixture) {
	n := newNode(t, f.reg)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if err := n.ctrd.Pull(ctx, f.esgz, n.thaw.mirror, "stargz"); err != nil {
		t.Fatal(err)
	}
	n.ctrd.Run(t, f.esgz, "stargz", readyLine)

	n.thaw.proc.Kill(t)
	if _, err := n.ctrd.Ctr(10*time.Second, "version"); err != nil {
		t.Fatalf("containerd stopped answering after the snapshotter died: %v", err)
	}
	start := time.Now()
	if _, err := n.ctrd.Ctr(60*time.Second, "snapshots", "--snapshotter", "stargz", "ls"); err == nil {
		t.Error("listing the dead snapshotter's snapshots succeeded")
	} else if strings.Contains(err.Error(), "signal: killed") {
		t.Errorf("a call to the dead snapshotter hung until killed (%s)", time.Since(start))
	}
	// Other snapshotters are unaffected.
	if _, err := n.ctrd.Ctr(30*time.Second, "snapshots", "--snapshotter", "overlayfs", "ls"); err != nil {
		t.Errorf("overlayfs snapshots after the stargz snapshotter died: %v", err)
	}

	n.thaw.start(t) // same data dir and socket
	if left := fuseMounts(t, n.thaw.dataDir); left > 4 {
		t.Logf("%d FUSE mounts after restart", left)
	}
	if _, err := os.Stat(n.thaw.socket); err != nil {
		t.Fatalf("socket after restart: %v", err)
	}
	// containerd redials a proxy snapshotter with gRPC's backoff (1 s,
	// growing 1.6 times a failure), so it finds the new one within seconds.
	n.ctrd.Proc.WaitFor(t, "containerd reaching the restarted snapshotter", 2*time.Minute, func() error {
		_, err := n.ctrd.Ctr(10*time.Second, "snapshots", "--snapshotter", "stargz", "ls")
		return err
	})
	_, out := n.ctrd.Run(t, f.esgz, "stargz", readyLine)
	remote, all := n.ctrd.RemoteSnapshots(t)
	if remote != all || all == 0 {
		t.Errorf("after the restart %d of %d snapshots are remote", remote, all)
	}
	t.Logf("ran again after the restart: %s", strings.TrimSpace(out))
	n.thaw.proc.Stop(t)
	if _, err := os.Stat(n.thaw.socket); !os.IsNotExist(err) {
		t.Errorf("socket left after a clean stop: %v", err)
	}
	if left := fuseMounts(t, n.thaw.dataDir); left != 0 {
		t.Errorf("%d FUSE mounts left after a clean stop", left)
	}
}
