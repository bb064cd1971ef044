//go:build e2e

package cluster

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"
)

// The fault tests' world: big enough that a burst lasts several seconds
// at the shaped rate (S/B = 10.7 s), so faults land in its middle.
const (
	faultImageSize = 64 << 20
	faultRate      = 50e6
)

// waitSeeder waits until d's cluster names a seeder for dgst and returns it.
func waitSeeder(t *testing.T, d *daemon, dgst string) string {
	t.Helper()
	var seeder string
	d.proc.WaitFor(t, "naming a seeder for "+dgst, time.Minute, func() error {
		v, err := d.peers("--blob", dgst)
		if err != nil {
			return err
		}
		if v.Blob == nil || v.Blob.Seeder == "" {
			return fmt.Errorf("no seeder yet: %+v", v.Blob)
		}
		seeder = v.Blob.Seeder
		return nil
	})
	return seeder
}

// waitHolder waits until the cluster, asked through d, lists node among
// dgst's holders.
func waitHolder(t *testing.T, d *daemon, dgst, node string) {
	t.Helper()
	d.proc.WaitFor(t, node+" holding "+dgst, time.Minute, func() error {
		v, err := d.peers("--blob", dgst)
		if err != nil {
			return err
		}
		if v.Blob != nil {
			for _, h := range v.Blob.Holders {
				if h.Node == node {
					return nil
				}
			}
		}
		return fmt.Errorf("%s not among the holders: %+v", node, v.Blob)
	})
}

// waitBytes waits until d has brought in at least n bytes of any source
// and uploaded at least up bytes to peers.
func waitBytes(t *testing.T, d *daemon, n, up int64, what string) {
	t.Helper()
	d.proc.WaitFor(t, what, 2*time.Minute, func() error {
		m, err := d.scrape()
		if err != nil {
			return err
		}
		if got := metricSet(m).peerBytes() + metricSet(m).upstreamBytes(); got < n {
			return fmt.Errorf("%d of %d bytes", got, n)
		}
		if got := metricSet(m).uploadBytes(); got < up {
			return fmt.Errorf("%d of %d bytes uploaded", got, up)
		}
		return nil
	})
}

// byName returns the daemon named name.
func byName(t *testing.T, ds []*daemon, name string) *daemon {
	t.Helper()
	for _, d := range ds {
		if d.name == name {
			return d
		}
	}
	t.Fatalf("no daemon %s", name)
	return nil
}

func without(ds []*daemon, drop ...*daemon) []*daemon {
	var out []*daemon
	for _, d := range ds {
		if !slices.Contains(drop, d) {
			out = append(out, d)
		}
	}
	return out
}

// assertFinished checks that each prefetch succeeded and its store is
// complete, and logs the metrics that say where its bytes came from.
func assertFinished(t *testing.T, h *harness, res []prefetchResult) {
	t.Helper()
	for _, r := range res {
		if r.err != nil {
			t.Errorf("%s: prefetch failed: %v\n%s", r.d.name, r.err, r.out)
			continue
		}
		r.d.assertComplete(t, h.img)
		m := r.d.mustScrape(t)
		t.Logf("%s: done after %.1fs; from origin %.1f MiB, from peers %.1f MiB, uploaded %.1f MiB; origin streams seeder %d, fallback %d",
			r.d.name, r.dur.Seconds(), mibf(m.upstreamBytes()), mibf(m.peerBytes()), mibf(m.uploadBytes()), m.originFetches("seeder"), m.originFetches("fallback"))
	}
}

// TestNodeKilledMidBurst: a node is SIGKILLed a third of the way through a
// burst: the node seeding the layer from the registry, or a client
// downloading it from peers (and serving its pieces to others). Every other
// node still completes, and the registry sends less than two copies: one
// node takes a lost seeder's role over instead of every node going to the
// origin.
func TestNodeKilledMidBurst(t *testing.T) {
	for _, tc := range []struct {
		name           string
		seeder, victim int // node indexes; nodes 0-2 are the voters, node0 leads
	}{
		// Clients, so that the leader's death (the next test) stays apart.
		{name: "seeder", seeder: 4, victim: 4},
		{name: "downloader", seeder: 1, victim: 4},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, harnessConfig{Nodes: 5, Rate: faultRate, ImageSize: faultImageSize})
			ds := h.startCluster(t, 5, clusterOpts{})
			seeder, victim := ds[tc.seeder], ds[tc.victim]
			originBefore := h.reg.host.txBytes(t)
			// The seeder starts first, so that it is the first to claim the role.
			start := time.Now()
			ps := map[*daemon]*pendingPrefetch{seeder: startPrefetch(t, seeder, h.img.ref, start)}
			if s := waitSeeder(t, ds[0], h.img.layer); s != seeder.name {
				t.Fatalf("seeder is %s, want %s (started first)", s, seeder.name)
			}
			if victim != seeder {
				// A downloading victim arrives second, so that it streams
				// from the seeder and the node after it streams from it (the
				// last node of a burst's chain serves nobody).
				ps[victim] = startPrefetch(t, victim, h.img.ref, start)
				waitHolder(t, ds[0], h.img.layer, victim.name)
			}
			for _, d := range without(ds, seeder, victim) {
				ps[d] = startPrefetch(t, d, h.img.ref, start)
			}
			// Killed while it serves others: once it uploaded a piece.
			waitBytes(t, victim, h.img.layerSize/3, 1, "a third of the layer in, a piece out")
			vm := victim.mustScrape(t)
			victim.proc.Kill(t)
			t.Logf("killed %s after %.1fs, with %.1f MiB from the origin, %.1f MiB from peers, %.1f MiB uploaded",
				victim.name, time.Since(start).Seconds(), mibf(vm.upstreamBytes()), mibf(vm.peerBytes()), mibf(vm.uploadBytes()))
			if r := ps[victim].wait(); r.err == nil {
				t.Logf("the prefetch on %s had finished before it died", victim.name)
			}
			var res []prefetchResult
			for _, d := range without(ds, victim) {
				res = append(res, ps[d].wait())
			}
			assertFinished(t, h, res)

			origin := h.reg.host.txBytes(t) - originBefore
			t.Logf("the registry sent %.2f × S", float64(origin)/float64(h.img.layerSize))
			if origin >= 2*h.img.layerSize {
				t.Errorf("the registry sent %d bytes, %.2f × S; want < 2 × S", origin, float64(origin)/float64(h.img.layerSize))
			}
		})
	}
}

// TestLeaderKilledMidBurst: the Raft leader is SIGKILLed while the layer
// moves between peers. The transfers in flight finish, the two remaining
// voters elect a new leader that every survivor's `thaw peers` shows, and
// nobody stampedes to the registry.
func TestLeaderKilledMidBurst(t *testing.T) {
	h := newHarness(t, harnessConfig{Nodes: 5, Rate: faultRate, ImageSize: faultImageSize})
	ds := h.startCluster(t, 5, clusterOpts{})
	v, err := ds[0].peers()
	if err != nil {
		t.Fatal(err)
	}
	leader := byName(t, ds, v.Leader)
	// A client seeds, so that killing the leader does not also kill the
	// seeder (TestNodeKilledMidBurst covers that).
	seeder := ds[4]
	originBefore := h.reg.host.txBytes(t)
	start := time.Now()
	sp := startPrefetch(t, seeder, h.img.ref, start)
	if s := waitSeeder(t, leader, h.img.layer); s != seeder.name {
		t.Fatalf("seeder is %s, want %s (started first)", s, seeder.name)
	}
	ps := []*pendingPrefetch{sp}
	var lp *pendingPrefetch
	for _, d := range ds[:4] {
		p := startPrefetch(t, d, h.img.ref, start)
		if d == leader {
			lp = p
		} else {
			ps = append(ps, p)
		}
	}
	survivors := append([]*daemon{seeder}, without(ds[:4], leader)...)
	// Transfers in flight: some node other than the seeder and the leader
	// has pieces from peers.
	waitBytes(t, survivors[1], h.img.layerSize/4, 0, "a quarter of the layer from peers")
	leader.proc.Kill(t)
	killedAt := time.Since(start)
	t.Logf("killed the leader %s after %.1fs", leader.name, killedAt.Seconds())
	if r := lp.wait(); r.err == nil {
		t.Logf("prefetch on the killed leader had finished before it died")
	}

	var res []prefetchResult
	for _, p := range ps {
		res = append(res, p.wait())
	}
	assertFinished(t, h, res)

	for _, d := range survivors {
		var nv peersView
		d.proc.WaitFor(t, "showing a new leader", time.Minute, func() error {
			var err error
			if nv, err = d.peers(); err != nil {
				return err
			}
			if nv.Leader == "" || nv.Leader == leader.name {
				return fmt.Errorf("leader %q", nv.Leader)
			}
			return nil
		})
		t.Logf("%s: new leader %s", d.name, nv.Leader)
	}
	origin := h.reg.host.txBytes(t) - originBefore
	t.Logf("the registry sent %.2f × S", float64(origin)/float64(h.img.layerSize))
	if origin >= 2*h.img.layerSize {
		t.Errorf("the registry sent %.2f × S after the leader died; want < 2 × S", float64(origin)/float64(h.img.layerSize))
	}
}

// TestForeignCANodeCannotJoin: a node whose certificate another CA signed
// is refused by the cluster. It never lists the cluster's members, the
// cluster never lists it, a TLS error is logged, and when asked to prefetch
// it gets the image from the origin alone although peers hold it.
func TestForeignCANodeCannotJoin(t *testing.T) {
	h := newHarness(t, harnessConfig{Nodes: 4, Rate: faultRate, ImageSize: faultImageSize})
	ds := h.startCluster(t, 3, clusterOpts{})
	// The cluster holds the image, so a member would get it from peers.
	if r := prefetchAll(t, ds[:1], h.img.ref, nil); r[0].err != nil {
		t.Fatalf("prefetch on node0: %v\n%s", r[0].err, r[0].out)
	}
	uploadsBefore := ds[0].mustScrape(t).uploadBytes()

	foreignCA := h.dir + "/foreign-ca"
	runThaw(t, "certs", "init", "--dir", foreignCA)
	tlsDir := h.certs(t, 3, foreignCA)
	var join []string
	for _, d := range ds {
		join = append(join, d.peerAddr())
	}
	intruder := h.startDaemon(t, 3, daemonOpts{tlsDir: tlsDir, join: join})

	// Joining is retried with backoff; give it several attempts.
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		assertNotMember(t, intruder, ds)
		time.Sleep(time.Second)
	}
	own := grepFile(intruder.proc.Log, "certificate", "tls:")
	var theirs []string
	for _, d := range ds {
		theirs = append(theirs, grepFile(d.proc.Log, "certificate", "tls:")...)
	}
	if len(own)+len(theirs) == 0 {
		t.Errorf("no TLS error in the intruder's nor the cluster's logs; intruder's log:\n%s", tail(intruder.proc.Log, 30))
	}
	t.Logf("TLS errors logged: %d by the intruder, e.g.\n%s\n%d by the cluster, e.g.\n%s",
		len(own), strings.Join(own[:min(2, len(own))], "\n"), len(theirs), strings.Join(theirs[:min(2, len(theirs))], "\n"))

	res := prefetchAll(t, []*daemon{intruder}, h.img.ref, nil)
	assertFinished(t, h, res)
	m := intruder.mustScrape(t)
	if m.peerBytes() != 0 {
		t.Errorf("the intruder got %d bytes from peers; want 0", m.peerBytes())
	}
	if m.upstreamBytes() < h.img.layerSize {
		t.Errorf("the intruder got %d bytes from the origin; want the whole layer, %d", m.upstreamBytes(), h.img.layerSize)
	}
	if up := ds[0].mustScrape(t).uploadBytes(); up != uploadsBefore {
		t.Errorf("node0 uploaded %d bytes while the intruder pulled; want none", up-uploadsBefore)
	}
	assertNotMember(t, intruder, ds)
}

// assertNotMember checks that the intruder lists no cluster member and that
// no member lists it.
func assertNotMember(t *testing.T, intruder *daemon, ds []*daemon) {
	t.Helper()
	if v, err := intruder.peers(); err == nil {
		for _, d := range ds {
			if _, ok := v.member(d.name); ok {
				t.Fatalf("the intruder lists %s as a member: %+v", d.name, v)
			}
		}
		if v.Leader != "" && v.Leader != intruder.name {
			t.Fatalf("the intruder knows leader %s: %+v", v.Leader, v)
		}
	}
	for _, d := range ds {
		v, err := d.peers()
		if err != nil {
			t.Fatalf("%s: %v", d.name, err)
		}
		if _, ok := v.member(intruder.name); ok {
			t.Fatalf("%s lists the intruder: %+v", d.name, v)
		}
	}
}

// TestPartitionedNodeFallsBack: mid-burst, a node downloading from peers
// loses every packet to and from the other nodes (iptables DROP inside its
// namespace: no error, only silence), while the registry stays reachable.
// It falls back to the origin, completes, and the others complete too.
func TestPartitionedNodeFallsBack(t *testing.T) {
	h := newHarness(t, harnessConfig{Nodes: 4, Rate: faultRate, ImageSize: faultImageSize})
	ds := h.startCluster(t, 4, clusterOpts{})
	// node1 seeds (started first); node3, a client, is cut off.
	seeder, victim := ds[1], ds[3]
	start := time.Now()
	ps := []*pendingPrefetch{startPrefetch(t, seeder, h.img.ref, start)}
	if s := waitSeeder(t, ds[0], h.img.layer); s != seeder.name {
		t.Fatalf("seeder is %s, want %s (started first)", s, seeder.name)
	}
	var vp *pendingPrefetch
	for _, d := range []*daemon{ds[0], ds[2], victim} {
		p := startPrefetch(t, d, h.img.ref, start)
		if d == victim {
			vp = p
		} else {
			ps = append(ps, p)
		}
	}
	waitBytes(t, victim, h.img.layerSize/4, 0, "a quarter of the layer from peers")
	var others []string
	for _, d := range ds {
		if d != victim {
			others = append(others, d.node.ip)
		}
	}
	blockPeers(t, victim.node, others)
	cutAt := time.Now()
	before := victim.mustScrape(t)
	t.Logf("cut %s off from %s after %.1fs, with %.1f MiB from peers", victim.name, strings.Join(others, ", "), cutAt.Sub(start).Seconds(), mibf(before.peerBytes()))

	// When did the victim turn to the origin? Logged, not asserted.
	fellBack := make(chan time.Duration, 1)
	go func() {
		err := poll(5*time.Minute, 200*time.Millisecond, func() error {
			m, err := victim.scrape()
			if err != nil {
				return err
			}
			if metricSet(m).upstreamBytes() <= before.upstreamBytes() {
				return errors.New("no origin bytes yet")
			}
			return nil
		})
		if err != nil {
			fellBack <- -1
			return
		}
		fellBack <- time.Since(cutAt)
	}()

	r := vp.wait()
	assertFinished(t, h, []prefetchResult{r})
	if d := <-fellBack; d >= 0 {
		t.Logf("%s read from the origin %.1fs after the cut and finished %.1fs after it", victim.name, d.Seconds(), time.Since(cutAt).Seconds())
	}
	m := victim.mustScrape(t)
	if m.originFetches("fallback") < 1 {
		t.Errorf("%s: thaw_p2p_origin_fetches_total{reason=\"fallback\"} = %d; want >= 1", victim.name, m.originFetches("fallback"))
	}
	if m.upstreamBytes() == 0 {
		t.Errorf("%s: no bytes from the origin after the cut", victim.name)
	}
	if fb := grepFile(victim.proc.Log, "origin"); len(fb) > 0 {
		t.Logf("%s's log on the fallback:\n%s", victim.name, strings.Join(fb[:min(5, len(fb))], "\n"))
	}

	var res []prefetchResult
	for _, p := range ps {
		res = append(res, p.wait())
	}
	assertFinished(t, h, res)
}
