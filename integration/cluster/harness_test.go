//go:build e2e

package cluster

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/thaw-dev/thaw/integration/testenv"
)

// Ports every daemon uses inside its own namespace.
const (
	mirrorAddr   = "127.0.0.1:5050" // loopback of the node's namespace
	peerPort     = "5051"
	metricsPort  = "5052"
	raftPort     = "5053"
	registryPort = "5000"
)

// harnessConfig is the world a test runs in.
type harnessConfig struct {
	Nodes     int   // node namespaces
	Rate      int64 // bits/s of every link, each direction
	ImageSize int64 // bytes of random data in the image's one layer
	// AckPriority puts small packets (pure ACKs) ahead of bulk data in each
	// link's queue, as a fair queue (fq_codel) would; a diagnostic of what
	// the plain FIFO costs, not the benchmark's definition.
	AckPriority bool
}

// harness is a shaped network with a registry holding the test image, on
// which tests start thaw daemons.
type harness struct {
	cfg  harnessConfig
	dir  string // short temp dir: logs, data dirs, certificates
	nw   *network
	reg  *registry
	img  testImage
	ca   string // the cluster CA's directory, once certs are made
	runs int    // daemons started, for unique directory names
}

// newHarness builds the network, starts the registry, pushes the image,
// shapes the links and checks the shaping. Everything goes when the test ends.
func newHarness(t *testing.T, cfg harnessConfig) *harness {
	t.Helper()
	start := time.Now()
	h := &harness{cfg: cfg, dir: shortTempDir(t)}
	h.nw = newNetwork(t, cfg.Nodes, cfg.Rate)
	h.nw.ackPriority = cfg.AckPriority
	h.reg = startRegistry(t, h.dir, h.nw.registry)
	// The push goes before the links are shaped: it is set-up, not part of
	// what a test measures.
	h.img = pushImage(t, h.reg.addr, cfg.ImageSize)
	h.nw.shape(t)
	h.nw.checkShaping(t)
	t.Logf("harness up in %.1fs", time.Since(start).Seconds())
	return h
}

// shortTempDir is a temporary directory with a short path, for unix sockets
// (their paths must stay under 108 bytes).
func shortTempDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "thw-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := os.RemoveAll(dir); err != nil {
			t.Errorf("remove %s: %v", dir, err)
		}
	})
	return dir
}

// registry is a docker-registry (CNCF distribution 2.8) in its own
// namespace, with filesystem storage in the harness's directory.
type registry struct {
	host *host
	addr string // ip:port, also the registry part of image names
	proc *process
}

func startRegistry(t *testing.T, dir string, h *host) *registry {
	t.Helper()
	dir = filepath.Join(dir, "registry")
	if err := os.MkdirAll(filepath.Join(dir, "data"), 0o755); err != nil {
		t.Fatal(err)
	}
	addr := h.ip + ":" + registryPort
	config := fmt.Sprintf(`version: 0.1
log:
  level: warn
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: %s
http:
  addr: %s
  secret: thaw-cluster
`, filepath.Join(dir, "data"), addr)
	cfgPath := filepath.Join(dir, "config.yml")
	if err := os.WriteFile(cfgPath, []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	r := &registry{host: h, addr: addr}
	r.proc = startProcess(t, dir, "docker-registry", h.name, cleanEnv(), "docker-registry", "serve", cfgPath)
	r.proc.WaitFor(t, "answering /v2/", 20*time.Second, testenv.WantStatus200("http://"+addr+"/v2/"))
	return r
}

// testImage is a one-layer image of random data: the layer is an
// uncompressed tar of one file, so its bytes are the data's, no compression
// and no CPU spent on it.
type testImage struct {
	ref       string // registry/repo:tag
	digest    string // the manifest's
	blobs     []string
	sizes     map[string]int64
	layer     string // the layer's digest
	layerSize int64  // S: the bytes a node must bring in
}

func pushImage(t *testing.T, registry string, size int64) testImage {
	t.Helper()
	data := make([]byte, size)
	if _, err := rand.Read(data); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	if err := tw.WriteHeader(&tar.Header{Name: "data.bin", Mode: 0o644, Size: size, ModTime: time.Unix(1700000000, 0), Typeflag: tar.TypeReg}); err != nil {
		t.Fatal(err)
	}
	if _, err := tw.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	data = nil
	layer := static.NewLayer(buf.Bytes(), types.OCIUncompressedLayer)

	img, err := mutate.ConfigFile(mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON), &v1.ConfigFile{
		OS: "linux", Architecture: runtime.GOARCH, RootFS: v1.RootFS{Type: "layers"},
	})
	if err != nil {
		t.Fatal(err)
	}
	img, err = mutate.Append(img, mutate.Addendum{Layer: layer, History: v1.History{CreatedBy: "thaw cluster test: random data"}})
	if err != nil {
		t.Fatal(err)
	}
	ref, err := name.NewTag(registry+"/cluster/burst:v1", name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	start := time.Now()
	if err := remote.Write(ref, img, remote.WithContext(ctx), remote.WithTransport(tr)); err != nil {
		t.Fatalf("push %s: %v", ref, err)
	}

	ti := testImage{ref: ref.Name(), sizes: map[string]int64{}}
	dgst, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	ti.digest = dgst.String()
	cfgName, err := img.ConfigName()
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := img.RawConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	ti.blobs = append(ti.blobs, cfgName.String())
	ti.sizes[cfgName.String()] = int64(len(cfg))
	ld, err := layer.Digest()
	if err != nil {
		t.Fatal(err)
	}
	ti.layer, ti.layerSize = ld.String(), int64(buf.Len())
	ti.blobs = append(ti.blobs, ti.layer)
	ti.sizes[ti.layer] = ti.layerSize
	t.Logf("pushed %s (%s) in %.1fs: layer %s of %d bytes", ti.ref, ti.digest, time.Since(start).Seconds(), ti.layer, ti.layerSize)
	return ti
}

// daemonOpts says how a daemon joins the network.
type daemonOpts struct {
	tlsDir string   // empty: a standalone daemon pulling from the registry
	join   []string // peer addresses of nodes to join
	voters int      // --voters (0: the daemon's default)
	extra  []string // further flags
}

// daemon is a `thaw daemon` in a node's namespace.
type daemon struct {
	name    string // node id
	node    *host
	dir     string // data dir; also holds the log
	api     string // unix socket
	metrics string // URL of /metrics, reachable from the root namespace
	cluster bool
	proc    *process
}

// startDaemon starts a daemon on node i with fresh data and waits until it
// answers on its API and metrics.
func (h *harness) startDaemon(t *testing.T, i int, o daemonOpts) *daemon {
	t.Helper()
	d := h.launchDaemon(t, i, o)
	d.waitReady(t)
	return d
}

// launchDaemon starts a daemon on node i with fresh data.
func (h *harness) launchDaemon(t *testing.T, i int, o daemonOpts) *daemon {
	t.Helper()
	h.runs++
	node := h.nw.nodes[i]
	d := &daemon{
		name:    fmt.Sprintf("node%d", i),
		node:    node,
		dir:     filepath.Join(h.dir, fmt.Sprintf("r%d-n%d", h.runs, i)),
		metrics: "http://" + node.ip + ":" + metricsPort + "/metrics",
		cluster: o.tlsDir != "",
	}
	d.api = filepath.Join(d.dir, "thaw.sock")
	dockerConfig := filepath.Join(d.dir, "docker-config") // no credentials
	if err := os.MkdirAll(dockerConfig, 0o755); err != nil {
		t.Fatal(err)
	}
	args := []string{
		"daemon",
		"--data-dir", filepath.Join(d.dir, "data"),
		"--api", d.api,
		"--mirror-addr", mirrorAddr,
		"--metrics-addr", "0.0.0.0:" + metricsPort,
		"--insecure-registry", h.reg.addr,
		"--log-level", "debug",
	}
	if d.cluster {
		args = append(args,
			"--node-id", d.name,
			"--tls-dir", o.tlsDir,
			"--advertise-addr", node.ip,
			"--peer-addr", "0.0.0.0:"+peerPort,
			"--raft-addr", "0.0.0.0:"+raftPort,
		)
		if len(o.join) > 0 {
			args = append(args, "--join", strings.Join(o.join, ","))
		}
		if o.voters > 0 {
			args = append(args, "--voters", strconv.Itoa(o.voters))
		}
	}
	args = append(args, o.extra...)
	d.proc = startProcess(t, d.dir, "thaw-"+d.name, node.name, cleanEnv("DOCKER_CONFIG="+dockerConfig), thawBin, args...)
	return d
}

// waitReady waits until the daemon answers on its metrics and API.
func (d *daemon) waitReady(t *testing.T) {
	t.Helper()
	d.proc.WaitFor(t, "answering on metrics and API", 60*time.Second, func() error {
		if err := testenv.WantStatus200(d.metrics)(); err != nil {
			return err
		}
		_, err := d.cliErr(10*time.Second, "status")
		return err
	})
}

// peerAddr is the address other nodes join.
func (d *daemon) peerAddr() string { return d.node.ip + ":" + peerPort }

// cliErr runs a thaw command against this daemon and returns its standard
// output.
func (d *daemon) cliErr(timeout time.Duration, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return runOut(ctx, cleanEnv(), thawBin, append(args, "--data-dir", filepath.Join(d.dir, "data"), "--api", d.api)...)
}

func (d *daemon) cli(t *testing.T, args ...string) string {
	t.Helper()
	out, err := d.cliErr(3*time.Minute, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// storeBlob is an entry of `thaw images --blobs --json`.
type storeBlob struct {
	Digest   string `json:"digest"`
	Size     int64  `json:"size"`
	Present  int64  `json:"present"`
	Complete bool   `json:"complete"`
}

func (d *daemon) blobs(t *testing.T) map[string]storeBlob {
	t.Helper()
	out := d.cli(t, "images", "--blobs", "--json")
	var list []storeBlob
	if err := json.Unmarshal([]byte(out), &list); err != nil {
		t.Fatalf("%s: thaw images --blobs --json: %v\n%s", d.name, err, out)
	}
	m := make(map[string]storeBlob, len(list))
	for _, b := range list {
		m[b.Digest] = b
	}
	return m
}

// assertComplete checks that the daemon's store holds every blob of img,
// complete and of the right size. The store verified each blob's digest
// when it committed it.
func (d *daemon) assertComplete(t *testing.T, img testImage) {
	t.Helper()
	blobs := d.blobs(t)
	for _, dg := range img.blobs {
		b, ok := blobs[dg]
		switch {
		case !ok:
			t.Errorf("%s: store does not list blob %s", d.name, dg)
		case b.Size != img.sizes[dg]:
			t.Errorf("%s: store lists blob %s with size %d, want %d", d.name, dg, b.Size, img.sizes[dg])
		case !b.Complete || b.Present != b.Size:
			t.Errorf("%s: store has blob %s incomplete: %d of %d bytes", d.name, dg, b.Present, b.Size)
		}
	}
}

// scrape reads /metrics into series (name{labels} as exposed) → value.
// A series never incremented is absent, which reads as 0.
func (d *daemon) scrape() (map[string]float64, error) {
	code, body, err := testenv.HTTPGet(d.metrics)
	if err != nil {
		return nil, err
	}
	if code != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %d", d.metrics, code)
	}
	series := map[string]float64{}
	for line := range strings.SplitSeq(body, "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			return nil, fmt.Errorf("metrics line %q: %v", line, err)
		}
		series[line[:i]] = v
	}
	return series, nil
}

func (d *daemon) mustScrape(t *testing.T) metricSet {
	t.Helper()
	m, err := d.scrape()
	if err != nil {
		t.Fatalf("%s: %v", d.name, err)
	}
	return metricSet(m)
}

// metricSet is one scrape.
type metricSet map[string]float64

// sum adds the series of metric name whose labels contain every one of
// labels (`source="peer"`).
func (m metricSet) sum(name string, labels ...string) float64 {
	var s float64
	for k, v := range m {
		base, lbl, _ := strings.Cut(k, "{")
		if base != name {
			continue
		}
		ok := true
		for _, l := range labels {
			if !strings.Contains(lbl, l) {
				ok = false
				break
			}
		}
		if ok {
			s += v
		}
	}
	return s
}

// Counters the tests read.
func (m metricSet) peerBytes() int64 {
	return int64(m.sum("thaw_fetched_bytes_total", `source="peer"`))
}
func (m metricSet) upstreamBytes() int64 {
	return int64(m.sum("thaw_fetched_bytes_total", `source="upstream"`))
}
func (m metricSet) uploadBytes() int64 { return int64(m.sum("thaw_p2p_upload_bytes_total")) }
func (m metricSet) originFetches(reason string) int {
	return int(m.sum("thaw_p2p_origin_fetches_total", `reason="`+reason+`"`))
}

// prefetchResult is one node's `thaw prefetch --wait`.
type prefetchResult struct {
	d   *daemon
	dur time.Duration // from the start given to startPrefetch to the command's exit
	out string
	err error
}

// pendingPrefetch is a `thaw prefetch --wait` running.
type pendingPrefetch struct {
	done chan struct{}
	res  prefetchResult
}

// startPrefetch starts `thaw prefetch --wait ref` on d; the result's
// duration counts from start.
func startPrefetch(t *testing.T, d *daemon, ref string, start time.Time) *pendingPrefetch {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	cmd := exec.CommandContext(ctx, thawBin, "prefetch", "--wait", ref, "--data-dir", filepath.Join(d.dir, "data"), "--api", d.api)
	cmd.Env = cleanEnv()
	cmd.WaitDelay = 5 * time.Second
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatalf("start prefetch on %s: %v", d.name, err)
	}
	p := &pendingPrefetch{done: make(chan struct{})}
	go func() {
		defer cancel()
		err := cmd.Wait()
		p.res = prefetchResult{d: d, dur: time.Since(start), out: out.String(), err: err}
		close(p.done)
	}()
	return p
}

func (p *pendingPrefetch) wait() prefetchResult {
	<-p.done
	return p.res
}

// prefetchAll starts `thaw prefetch --wait ref` on every daemon at the same
// moment and waits for all of them. onStart, if set, runs once every command
// is started, while they run (the fault tests kill nodes there).
func prefetchAll(t *testing.T, ds []*daemon, ref string, onStart func(start time.Time)) []prefetchResult {
	t.Helper()
	start := time.Now()
	ps := make([]*pendingPrefetch, len(ds))
	for i, d := range ds {
		ps[i] = startPrefetch(t, d, ref, start)
	}
	if onStart != nil {
		onStart(start)
	}
	res := make([]prefetchResult, len(ds))
	for i, p := range ps {
		res[i] = p.wait()
	}
	return res
}

// certs makes the cluster CA once, and a node certificate for d's address
// in d's directory.
func (h *harness) certs(t *testing.T, node int, caDir string) string {
	t.Helper()
	if caDir == "" {
		if h.ca == "" {
			h.ca = filepath.Join(h.dir, "ca")
			runThaw(t, "certs", "init", "--dir", h.ca)
		}
		caDir = h.ca
	}
	h.runs++
	out := filepath.Join(h.dir, fmt.Sprintf("tls%d-n%d", h.runs, node))
	runThaw(t, "certs", "issue", "--ca-dir", caDir, "--out", out, "--name", fmt.Sprintf("node%d", node), "--host", h.nw.nodes[node].ip)
	return out
}

func runThaw(t *testing.T, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := runCmd(ctx, cleanEnv(), thawBin, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// peersView is `thaw peers --json`.
type peersView struct {
	Self    peerMember   `json:"self"`
	Leader  string       `json:"leader"`
	Members []peerMember `json:"members"`
	Blob    *struct {
		Seeder  string `json:"seeder"`
		Holders []struct {
			Node     string `json:"node"`
			Complete bool   `json:"complete"`
		} `json:"holders"`
	} `json:"blob"`
	Error string `json:"error"`
}

// peerMember is p2p.Member as the CLI prints it; Alive is the leader's view.
type peerMember struct {
	ID       string `json:"id"`
	PeerAddr string `json:"peerAddr"`
	Voter    bool   `json:"voter"`
	Alive    bool   `json:"alive"`
}

func (d *daemon) peers(args ...string) (peersView, error) {
	out, err := d.cliErr(15*time.Second, append([]string{"peers", "--json"}, args...)...)
	if err != nil {
		return peersView{}, err
	}
	var v peersView
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		return peersView{}, fmt.Errorf("thaw peers --json: %v\n%s", err, out)
	}
	return v, nil
}

// member returns the member named id.
func (v peersView) member(id string) (peerMember, bool) {
	for _, m := range v.Members {
		if m.ID == id {
			return m, true
		}
	}
	return peerMember{}, false
}

// waitMembers waits until d's `thaw peers` lists every one of ids, alive,
// with a leader.
func (d *daemon) waitMembers(t *testing.T, timeout time.Duration, ids ...string) peersView {
	t.Helper()
	var v peersView
	d.proc.WaitFor(t, "listing "+strings.Join(ids, ", "), timeout, func() error {
		var err error
		if v, err = d.peers(); err != nil {
			return err
		}
		if v.Leader == "" {
			return errors.New("no leader")
		}
		var missing []string
		for _, id := range ids {
			if m, ok := v.member(id); !ok || !m.Alive {
				missing = append(missing, id)
			}
		}
		if len(missing) > 0 {
			return fmt.Errorf("not listed alive: %s (view %+v)", strings.Join(missing, ", "), v)
		}
		return nil
	})
	return v
}

// clusterOpts vary how startCluster forms the cluster.
type clusterOpts struct {
	voters    int                  // --voters; 0: the daemon's default (3)
	extra     []string             // further daemon flags for every node
	nodeExtra func(i int) []string // further flags for node i, if set
}

// startCluster starts daemons on nodes 0..n-1 that form one cluster: node0
// bootstraps; node1 joins node0; node2 joins node0 and node1; the others
// join the first three, all at once. It returns once node0 lists every node
// alive.
func (h *harness) startCluster(t *testing.T, n int, o clusterOpts) []*daemon {
	t.Helper()
	start := time.Now()
	ds := make([]*daemon, n)
	names := make([]string, n)
	for i := range n {
		names[i] = fmt.Sprintf("node%d", i)
	}
	tls := make([]string, n)
	for i := range n {
		tls[i] = h.certs(t, i, "")
	}
	opts := func(i int, join []string) daemonOpts {
		extra := slices.Clone(o.extra)
		if o.nodeExtra != nil {
			extra = append(extra, o.nodeExtra(i)...)
		}
		return daemonOpts{tlsDir: tls[i], join: join, voters: o.voters, extra: extra}
	}
	var seeds []string
	for i := range min(n, 3) {
		ds[i] = h.startDaemon(t, i, opts(i, slices.Clone(seeds)))
		ds[0].waitMembers(t, 60*time.Second, names[:i+1]...)
		seeds = append(seeds, ds[i].peerAddr())
	}
	// The others start at once, as nodes of a real cluster would.
	for i := 3; i < n; i++ {
		ds[i] = h.launchDaemon(t, i, opts(i, seeds))
	}
	for _, d := range ds[min(n, 3):] {
		d.waitReady(t)
	}
	v := ds[0].waitMembers(t, 2*time.Minute, names...)
	t.Logf("cluster of %d formed in %.1fs; leader %s", n, time.Since(start).Seconds(), v.Leader)
	return ds
}

// TestClusterBurst is the harness's own check and the peer network's
// plainest case: four nodes form a cluster (three voters, one client), all
// pull the image at once, every store ends complete, the registry sends the
// layer about once and the other three nodes get it from peers.
func TestClusterBurst(t *testing.T) {
	h := newHarness(t, harnessConfig{Nodes: 4, Rate: 100e6, ImageSize: 32 << 20})
	ds := h.startCluster(t, 4, clusterOpts{})
	v, err := ds[3].peers()
	if err != nil {
		t.Fatal(err)
	}
	for i, d := range ds {
		m, ok := v.member(d.name)
		switch {
		case !ok:
			t.Errorf("node3's thaw peers does not list %s: %+v", d.name, v)
		case m.Voter != (i < 3):
			t.Errorf("%s: voter = %v; want the first three nodes voters, the others clients", d.name, m.Voter)
		}
	}

	originBefore := h.reg.host.txBytes(t)
	res := prefetchAll(t, ds, h.img.ref, nil)
	var fromPeers, seeders int
	for _, r := range res {
		if r.err != nil {
			t.Fatalf("%s: prefetch: %v\n%s", r.d.name, r.err, r.out)
		}
		r.d.assertComplete(t, h.img)
		m := r.d.mustScrape(t)
		t.Logf("%s: %.1fs; from origin %.1f MiB, from peers %.1f MiB, uploaded %.1f MiB",
			r.d.name, r.dur.Seconds(), mibf(m.upstreamBytes()), mibf(m.peerBytes()), mibf(m.uploadBytes()))
		if m.peerBytes() >= h.img.layerSize {
			fromPeers++
		}
		if m.originFetches("seeder") > 0 {
			seeders++
		}
		if n := m.originFetches("fallback"); n > 0 {
			t.Errorf("%s fell back to the origin %d times", r.d.name, n)
		}
	}
	origin := h.reg.host.txBytes(t) - originBefore
	t.Logf("the registry sent %.2f × S", float64(origin)/float64(h.img.layerSize))
	if origin > h.img.layerSize*11/10 {
		t.Errorf("the registry sent %.2f × S; want about one copy", float64(origin)/float64(h.img.layerSize))
	}
	if fromPeers != len(ds)-1 {
		t.Errorf("%d nodes got the whole layer from peers; want %d (all but the seeder)", fromPeers, len(ds)-1)
	}
}
