//go:build e2e

package e2e

import (
	"net"
	"slices"
	"strings"
	"testing"
	"time"
)

// node is one test's world: a registry holding the test image, a thaw
// daemon mirroring it, a containerd, and hosts.toml files that send
// containerd's pulls of the registry to thaw first.
type node struct {
	reg      *registry
	thaw     *thawDaemon
	ctrd     *containerd
	hostsDir string
	img      testImage
}

// newNode starts a node; thawArgs are extra flags for thaw daemon.
func newNode(t *testing.T, thawArgs ...string) *node {
	t.Helper()
	start := time.Now()
	n := &node{reg: startRegistry(t)}
	n.thaw = startThaw(t, n.reg.addr, thawArgs...)
	n.ctrd = startContainerd(t)
	n.hostsDir = writeHostsDir(t, "registry.example.com", n.reg.addr, n.reg.addr, n.thaw.mirrorAddr)
	n.img = pushTestImage(t, n.reg.addr)
	t.Logf("registry %s, thaw mirror %s, containerd %s: up in %.1fs", n.reg.addr, n.thaw.mirrorAddr, n.ctrd.sock, time.Since(start).Seconds())
	return n
}

// assertRuns runs the image without pulling and checks what it printed,
// which proves every layer reached containerd's snapshotter intact.
func (n *node) assertRuns(t *testing.T) {
	t.Helper()
	out := n.ctrd.run(t, n.img.ref)
	if !strings.Contains(out, n.img.output) {
		t.Fatalf("ctr run %s printed %q, want %q", n.img.ref, out, n.img.output)
	}
}

// assertStoreComplete checks that thaw's store holds every blob of the image,
// complete and of the right size.
func (n *node) assertStoreComplete(t *testing.T) {
	t.Helper()
	blobs := n.thaw.blobs(t)
	for _, d := range n.img.blobs {
		b, ok := blobs[d]
		switch {
		case !ok:
			t.Errorf("thaw's store does not list blob %s", d)
		case b.Size != n.img.sizes[d]:
			t.Errorf("thaw's store lists blob %s with size %d, want %d", d, b.Size, n.img.sizes[d])
		case !b.Complete || b.Present != b.Size:
			t.Errorf("thaw's store has blob %s incomplete: %d of %d bytes", d, b.Present, b.Size)
		}
	}
}

// TestPullThroughMirror: containerd, told by hosts.toml to use thaw, pulls
// the image through thaw, which fetches it from the registry and keeps it.
func TestPullThroughMirror(t *testing.T) {
	n := newNode(t)

	out, err := n.ctrd.pull(t, n.hostsDir, n.img.ref)
	if err != nil {
		t.Fatalf("pull through the mirror: %v", err)
	}
	t.Logf("ctr images pull:\n%s", ctrSummary(out))

	// The bytes went through thaw: it fetched the whole image upstream and
	// served it to containerd.
	c := n.thaw.counters(t)
	t.Logf("thaw counters: %+v", c)
	if c.FetchedUpstream < n.img.size {
		t.Errorf("thaw_fetched_bytes_total{source=upstream} = %d, want >= %d (the image's blobs)", c.FetchedUpstream, n.img.size)
	}
	if served := c.ServedCache + c.ServedUpstream; served < n.img.size {
		t.Errorf("thaw_served_bytes_total = %d (cache %d, upstream %d), want >= %d", served, c.ServedCache, c.ServedUpstream, n.img.size)
	}
	n.assertStoreComplete(t)

	// containerd never went to the registry itself; thaw did, for every blob.
	if reqs := n.reg.requestsFrom(t, "containerd/"); len(reqs) > 0 {
		t.Errorf("containerd bypassed the mirror and asked the registry directly: %+v", reqs)
	}
	if missing := n.reg.missingBlobGETs(t, "thaw", n.img.blobs...); len(missing) > 0 {
		t.Errorf("the registry did not serve these blobs to thaw: %v", missing)
	}

	if missing := containsAll(n.ctrd.images(t), n.img.ref); len(missing) > 0 {
		t.Errorf("ctr images ls does not list %s", n.img.ref)
	}
	n.assertRuns(t)
}

// TestPullFromStoreWithRegistryDown: once thaw has an image, containerd can
// pull it again with the registry gone, and thaw serves it from its store
// without going upstream. The tag TTL is tiny, as if the outage had lasted
// longer than the default 30 s: the tag must resolve to its last known digest
// (--serve-stale-tags, on by default).
func TestPullFromStoreWithRegistryDown(t *testing.T) {
	n := newNode(t, "--tag-ttl", "1ns")
	if _, err := n.ctrd.pull(t, n.hostsDir, n.img.ref); err != nil {
		t.Fatalf("first pull: %v", err)
	}

	// Make containerd forget the image and its content, so that the second
	// pull really transfers every blob again.
	n.ctrd.ctr(t, "images", "rm", "--sync", n.img.ref)
	content := n.ctrd.content(t)
	if left := slices.DeleteFunc(slices.Clone(n.img.blobs), func(d string) bool {
		return !slices.Contains(content, d)
	}); len(left) > 0 {
		t.Fatalf("containerd still has blobs %v after ctr images rm --sync; the second pull would not fetch them", left)
	}

	n.reg.stop(t)
	before := n.thaw.counters(t)

	out, err := n.ctrd.pull(t, n.hostsDir, n.img.ref)
	if err != nil {
		t.Fatalf("pull with the registry down: %v", err)
	}
	t.Logf("ctr images pull, registry down:\n%s", ctrSummary(out))

	after := n.thaw.counters(t)
	t.Logf("thaw counters before the second pull: %+v, after: %+v", before, after)
	if got := after.ServedCache - before.ServedCache; got < n.img.size {
		t.Errorf("thaw served %d bytes from its store during the second pull, want >= %d (the image's blobs)", got, n.img.size)
	}
	if got := after.FetchedUpstream - before.FetchedUpstream; got != 0 {
		t.Errorf("thaw fetched %d bytes upstream during the second pull, want 0: the registry was down", got)
	}
	if after.StaleTags <= before.StaleTags {
		t.Errorf("thaw_stale_tag_resolutions_total did not grow (%d): the tag should have resolved to its last known digest", after.StaleTags)
	}
	if missing := containsAll(n.ctrd.content(t), n.img.blobs...); len(missing) > 0 {
		t.Errorf("containerd lacks blobs %v after the second pull", missing)
	}
	n.assertRuns(t)

	// What containerd saw, on the wire: the mirror says where a blob came from.
	for _, d := range n.img.layers {
		if src := n.thaw.blobSource(t, n.reg.addr, "e2e/hello", d); src != "cache" {
			t.Errorf("GET blob %s from the mirror: X-Thaw-Source = %q, want cache", d, src)
		}
	}
}

// TestPrefetchIntoContainerd: thaw prefetch --containerd imports the image
// into containerd (content and unpack) so that it runs with no pull at all,
// here with the registry down by the time it runs.
func TestPrefetchIntoContainerd(t *testing.T) {
	n := newNode(t)

	out := n.thaw.cli(t, "prefetch", "--containerd", n.ctrd.sock, "--namespace", "default", n.img.ref)
	t.Logf("thaw prefetch:\n%s", out)
	if !strings.Contains(out, "imported into containerd") {
		t.Errorf("thaw prefetch --containerd did not report the import:\n%s", out)
	}
	n.reg.stop(t)

	if missing := containsAll(n.ctrd.images(t), n.img.ref); len(missing) > 0 {
		t.Fatalf("ctr images ls does not list %s after the prefetch: %v", n.img.ref, n.ctrd.images(t))
	}
	n.assertRuns(t)

	n.assertStoreComplete(t)
	// The prefetch fetched the image upstream; the import then read it from
	// thaw's store through the mirror.
	c := n.thaw.counters(t)
	t.Logf("thaw counters: %+v", c)
	if c.FetchedUpstream < n.img.size {
		t.Errorf("thaw_fetched_bytes_total{source=upstream} = %d, want >= %d (the image's blobs)", c.FetchedUpstream, n.img.size)
	}
	if c.ServedCache < n.img.size {
		t.Errorf("thaw_served_bytes_total{source=cache} = %d, want >= %d: the import should have read every blob from thaw's store", c.ServedCache, n.img.size)
	}
	imgs := n.thaw.images(t)
	if !slices.ContainsFunc(imgs, func(i storeImage) bool { return i.Ref == n.img.ref && i.Digest == n.img.digest }) {
		t.Errorf("thaw images does not list %s at %s: %+v", n.img.ref, n.img.digest, imgs)
	}
	// The import went through thaw, not to the registry.
	if reqs := n.reg.requestsFrom(t, "containerd/"); len(reqs) > 0 {
		t.Errorf("the import bypassed the mirror and asked the registry directly: %+v", reqs)
	}
}

// TestFallbackToRegistryWhenThawIsDown: with thaw dead, containerd follows
// hosts.toml to the next host, the registry itself, and the pull still works.
func TestFallbackToRegistryWhenThawIsDown(t *testing.T) {
	n := newNode(t)

	n.thaw.proc.Kill(t)
	if c, err := net.DialTimeout("tcp", n.thaw.mirrorAddr, time.Second); err == nil {
		c.Close()
		t.Fatalf("thaw was killed but its mirror %s still accepts connections", n.thaw.mirrorAddr)
	}

	start := time.Now()
	out, err := n.ctrd.pull(t, n.hostsDir, n.img.ref)
	if err != nil {
		t.Fatalf("pull with thaw down: %v", err)
	}
	t.Logf("ctr images pull, thaw down (%.1fs):\n%s", time.Since(start).Seconds(), ctrSummary(out))

	// containerd fetched the blobs from the registry itself.
	if missing := n.reg.missingBlobGETs(t, "containerd/", n.img.layers...); len(missing) > 0 {
		t.Errorf("the registry did not serve layers %v to containerd directly", missing)
	}
	n.assertRuns(t)
}

// TestDefaultHostsFile: the catch-all certs.d/_default/hosts.toml, which has
// no server line, sends a registry without a directory of its own through
// thaw, and falls back to the registry named in the image when thaw is down.
func TestDefaultHostsFile(t *testing.T) {
	n := newNode(t)
	n.hostsDir = writeHostsDir(t, "_default", "_default", n.reg.addr, n.thaw.mirrorAddr)

	if _, err := n.ctrd.pull(t, n.hostsDir, n.img.ref); err != nil {
		t.Fatalf("pull through the mirror: %v", err)
	}
	if c := n.thaw.counters(t); c.FetchedUpstream < n.img.size {
		t.Errorf("thaw_fetched_bytes_total{source=upstream} = %d, want >= %d: the pull did not go through thaw", c.FetchedUpstream, n.img.size)
	}
	if reqs := n.reg.requestsFrom(t, "containerd/"); len(reqs) > 0 {
		t.Errorf("containerd bypassed the mirror and asked the registry directly: %+v", reqs)
	}

	n.ctrd.ctr(t, "images", "rm", "--sync", n.img.ref)
	n.thaw.proc.Kill(t)
	if _, err := n.ctrd.pull(t, n.hostsDir, n.img.ref); err != nil {
		t.Fatalf("pull with thaw down: %v", err)
	}
	if missing := n.reg.missingBlobGETs(t, "containerd/", n.img.layers...); len(missing) > 0 {
		t.Errorf("with thaw down, the registry did not serve layers %v to containerd directly", missing)
	}
	n.assertRuns(t)
}
