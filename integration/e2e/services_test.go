//go:build e2e

package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/thaw-dev/thaw/integration/testenv"
)

// registry is a docker-registry (CNCF distribution 2.8) with filesystem
// storage in the test's temp dir.
type registry struct {
	addr string // 127.0.0.1:port, also the registry part of image names
	proc *process
}

func startRegistry(t *testing.T) *registry {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "registry")
	if err := os.MkdirAll(filepath.Join(dir, "data"), 0o755); err != nil {
		t.Fatal(err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
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
  secret: thaw-e2e
`, filepath.Join(dir, "data"), addr)
	cfgPath := filepath.Join(dir, "config.yml")
	if err := os.WriteFile(cfgPath, []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	r := &registry{addr: addr}
	r.proc = startProcess(t, dir, "docker-registry", cleanEnv(), "docker-registry", "serve", cfgPath)
	r.proc.WaitFor(t, "answering /v2/", 20*time.Second, testenv.WantStatus200("http://"+addr+"/v2/"))
	return r
}

// accessLogLine is one line of the registry's access log (combined format):
//
//	127.0.0.1 - - [date] "GET /v2/... HTTP/1.1" 200 157 "" "containerd/1.6.20"
var accessLogLine = regexp.MustCompile(`^\S+ \S+ \S+ \[[^\]]*\] "(\S+) (\S+) [^"]*" (\d{3}) \S+ "[^"]*" "([^"]*)"`)

// request is one request the registry answered.
type request struct {
	Method, Path, UserAgent string
	Status                  int
}

// requests returns every request the registry has logged so far.
func (r *registry) requests(t *testing.T) []request {
	t.Helper()
	f, err := os.Open(r.proc.Log)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var reqs []request
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		m := accessLogLine.FindStringSubmatch(sc.Text())
		if m == nil {
			continue
		}
		status, _ := strconv.Atoi(m[3])
		reqs = append(reqs, request{Method: m[1], Path: m[2], Status: status, UserAgent: m[4]})
	}
	return reqs
}

// missingBlobGETs returns those of digests that the registry has not served
// (GET, 200 or 206) to a client whose user agent contains agent. The registry
// logs a request just after writing its last byte, so a client can be done
// before the line is written: it polls for up to 5 s before reporting any.
func (r *registry) missingBlobGETs(t *testing.T, agent string, digests ...string) []string {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		var served []string
		for _, req := range r.requests(t) {
			_, dgst, ok := strings.Cut(req.Path, "/blobs/")
			if ok && req.Method == http.MethodGet && (req.Status == 200 || req.Status == 206) && strings.Contains(req.UserAgent, agent) {
				dgst, _, _ = strings.Cut(dgst, "?")
				served = append(served, dgst)
			}
		}
		missing := containsAll(served, digests...)
		if len(missing) == 0 || time.Now().After(deadline) {
			return missing
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// requestsFrom returns the requests whose user agent contains agent.
func (r *registry) requestsFrom(t *testing.T, agent string) []request {
	t.Helper()
	var out []request
	for _, req := range r.requests(t) {
		if strings.Contains(req.UserAgent, agent) {
			out = append(out, req)
		}
	}
	return out
}

// stop shuts the registry down and checks that its port no longer answers,
// so that a later success cannot have come from it.
func (r *registry) stop(t *testing.T) {
	t.Helper()
	r.proc.Stop(t)
	if c, err := net.DialTimeout("tcp", r.addr, time.Second); err == nil {
		c.Close()
		t.Fatalf("registry stopped but %s still accepts connections", r.addr)
	}
}

// containerd is a containerd 1.6 daemon with its own root, state and
// sockets (see testenv.StartContainerd), without the stargz snapshotter.
type containerd struct {
	*testenv.Containerd
	sock string
}

func startContainerd(t *testing.T) *containerd {
	t.Helper()
	c := &containerd{}
	// Registered before containerd so that it runs after containerd has
	// stopped (cleanups run last in, first out).
	t.Cleanup(func() {
		if c.sock != "" {
			killStrays(t, c.sock)
		}
	})
	c.Containerd = testenv.StartContainerd(t, "", "")
	c.sock = c.Sock
	return c
}

// ctr runs ctr against this containerd in the default namespace, failing the
// test if it fails.
func (c *containerd) ctr(t *testing.T, args ...string) string {
	t.Helper()
	out, err := c.ctrErr(t, 2*time.Minute, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func (c *containerd) ctrErr(t *testing.T, timeout time.Duration, args ...string) (string, error) {
	t.Helper()
	return c.Ctr(timeout, args...)
}

// pull is `ctr images pull` through the hosts.toml files in hostsDir. It
// returns ctr's output and error.
func (c *containerd) pull(t *testing.T, hostsDir, ref string) (string, error) {
	t.Helper()
	return c.ctrErr(t, 2*time.Minute, "images", "pull", "--plain-http", "--hosts-dir", hostsDir, ref)
}

// images lists the image names containerd has.
func (c *containerd) images(t *testing.T) []string {
	t.Helper()
	return strings.Fields(c.ctr(t, "images", "ls", "-q"))
}

// content lists the digests in containerd's content store.
func (c *containerd) content(t *testing.T) []string {
	t.Helper()
	return strings.Fields(c.ctr(t, "content", "ls", "-q"))
}

// run runs ref in a new container that is removed when it exits and returns
// its output. It does not pull: the image must already be unpacked.
func (c *containerd) run(t *testing.T, ref string) string {
	t.Helper()
	id := fmt.Sprintf("thaw-e2e-%d", time.Now().UnixNano())
	return c.ctr(t, "run", "--rm", ref, id)
}

// thawDaemon is `thaw daemon` with its data in the test's temp dir.
type thawDaemon struct {
	dataDir     string
	api         string // unix socket
	mirrorAddr  string
	metricsAddr string
	proc        *process
}

// startThaw starts a daemon that may reach insecureRegistry over plain HTTP;
// extra are further daemon flags.
func startThaw(t *testing.T, insecureRegistry string, extra ...string) *thawDaemon {
	t.Helper()
	dir := t.TempDir()
	d := &thawDaemon{
		dataDir:     filepath.Join(dir, "data"),
		api:         filepath.Join(testenv.ShortDir(t, "thaw-e2e-"), "thaw.sock"),
		mirrorAddr:  fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t)),
		metricsAddr: fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t)),
	}
	dockerConfig := filepath.Join(dir, "docker-config") // no credentials
	if err := os.MkdirAll(dockerConfig, 0o755); err != nil {
		t.Fatal(err)
	}
	args := append([]string{
		"daemon",
		"--data-dir", d.dataDir,
		"--api", d.api,
		"--mirror-addr", d.mirrorAddr,
		"--metrics-addr", d.metricsAddr,
		"--insecure-registry", insecureRegistry,
		"--log-level", "debug",
	}, extra...)
	d.proc = startProcess(t, dir, "thaw", cleanEnv("DOCKER_CONFIG="+dockerConfig), thawBin, args...)
	d.proc.WaitFor(t, "answering on mirror and metrics", 20*time.Second, func() error {
		if err := testenv.WantStatus200("http://" + d.mirrorAddr + "/v2/")(); err != nil {
			return err
		}
		return testenv.WantStatus200("http://" + d.metricsAddr + "/metrics")()
	})
	return d
}

// cli runs a thaw command against this daemon.
func (d *thawDaemon) cli(t *testing.T, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	out, err := runCmd(ctx, cleanEnv(), thawBin, append(args, "--data-dir", d.dataDir, "--api", d.api)...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// blobSource GETs a blob from the mirror as containerd would and returns the
// X-Thaw-Source header of the answer.
func (d *thawDaemon) blobSource(t *testing.T, registry, repo, digest string) string {
	t.Helper()
	url := "http://" + d.mirrorAddr + "/v2/" + repo + "/blobs/" + digest + "?ns=" + registry
	resp, err := testenv.HTTPClient.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s", url, resp.Status)
	}
	return resp.Header.Get("X-Thaw-Source")
}

// storeBlob is an entry of `thaw images --blobs --json`.
type storeBlob struct {
	Digest   string `json:"digest"`
	Size     int64  `json:"size"`
	Present  int64  `json:"present"`
	Complete bool   `json:"complete"`
}

func (d *thawDaemon) blobs(t *testing.T) map[string]storeBlob {
	t.Helper()
	out := d.cli(t, "images", "--blobs", "--json")
	var list []storeBlob
	if err := json.Unmarshal([]byte(out), &list); err != nil {
		t.Fatalf("thaw images --blobs --json: %v\n%s", err, out)
	}
	m := make(map[string]storeBlob, len(list))
	for _, b := range list {
		m[b.Digest] = b
	}
	return m
}

// storeImage is an entry of `thaw images --json`.
type storeImage struct {
	Ref    string `json:"ref"`
	Digest string `json:"digest"`
}

func (d *thawDaemon) images(t *testing.T) []storeImage {
	t.Helper()
	out := d.cli(t, "images", "--json")
	var list []storeImage
	if err := json.Unmarshal([]byte(out), &list); err != nil {
		t.Fatalf("thaw images --json: %v\n%s", err, out)
	}
	return list
}

// byteCounters are thaw's byte counters by source, and its count of tags
// answered with a stale digest, from /metrics.
type byteCounters struct {
	FetchedUpstream, ServedCache, ServedUpstream int64
	StaleTags                                    int64
}

func (d *thawDaemon) counters(t *testing.T) byteCounters {
	t.Helper()
	m := d.metrics(t)
	return byteCounters{
		FetchedUpstream: int64(m[`thaw_fetched_bytes_total{source="upstream"}`]),
		ServedCache:     int64(m[`thaw_served_bytes_total{source="cache"}`]),
		ServedUpstream:  int64(m[`thaw_served_bytes_total{source="upstream"}`]),
		StaleTags:       int64(m[`thaw_stale_tag_resolutions_total`]),
	}
}

// metrics scrapes /metrics into series (name{labels} as exposed) → value.
// The text format is simple enough that a parser library would add more than
// it saves; a series never incremented is absent, which reads as 0.
func (d *thawDaemon) metrics(t *testing.T) map[string]float64 {
	t.Helper()
	code, body, err := testenv.HTTPGet("http://" + d.metricsAddr + "/metrics")
	if err != nil || code != http.StatusOK {
		t.Fatalf("scrape thaw metrics: %d %v", code, err)
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
			t.Fatalf("metrics line %q: %v", line, err)
		}
		series[line[:i]] = v
	}
	return series
}

// writeHostsDir writes a hosts directory for containerd with one file,
// <dir>/<hostDir>/hosts.toml: deploy/containerd's example certs.d/<example>
// with its addresses replaced by registry's and mirror's, so that the
// documented examples are the ones under test.
func writeHostsDir(t *testing.T, example, hostDir, registry, mirror string) string {
	t.Helper()
	src := filepath.Join("..", "..", "deploy", "containerd", "certs.d", example, "hosts.toml")
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	toml := strings.NewReplacer(
		"https://registry.example.com", "http://"+registry,
		"http://127.0.0.1:5050", "http://"+mirror,
	).Replace(string(b))
	if !strings.Contains(toml, "http://"+mirror) {
		t.Fatalf("%s no longer names thaw's default mirror address http://127.0.0.1:5050, which this test replaces:\n%s", src, b)
	}
	dir := filepath.Join(t.TempDir(), "certs.d")
	if err := os.MkdirAll(filepath.Join(dir, hostDir), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, hostDir, "hosts.toml"), []byte(toml), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

// ctrSummary drops the progress table from ctr pull's output, keeping the
// lines a reader wants: fallbacks, unpacking, done.
func ctrSummary(out string) string {
	var keep []string
	for line := range strings.SplitSeq(out, "\n") {
		if line = strings.TrimSpace(line); line != "" && !strings.Contains(line, "|") && !strings.HasPrefix(line, "elapsed:") {
			keep = append(keep, line)
		}
	}
	return strings.Join(keep, "\n")
}

func containsAll(have []string, want ...string) []string {
	var missing []string
	for _, w := range want {
		if !slices.Contains(have, w) {
			missing = append(missing, w)
		}
	}
	return missing
}
