//go:build e2e

package lazy

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/thaw-dev/thaw/integration/testenv"
)

// prefix starts the name of every namespace and link this test binary
// creates, so that a later run can tell a dead run's leftovers.
var prefix = fmt.Sprintf("thl%d", os.Getpid())

var leftoverName = regexp.MustCompile(`^thl(\d+)`)

// removeLeftovers deletes namespaces and links of earlier runs whose
// process is gone.
func removeLeftovers() {
	stale := func(name string) bool {
		m := leftoverName.FindStringSubmatch(name)
		if m == nil {
			return false
		}
		_, err := os.Stat("/proc/" + m[1])
		return os.IsNotExist(err)
	}
	if out, err := exec.Command("ip", "netns", "list").Output(); err == nil {
		for line := range strings.SplitSeq(string(out), "\n") {
			if f := strings.Fields(line); len(f) > 0 && stale(f[0]) {
				_ = exec.Command("ip", "netns", "del", f[0]).Run()
			}
		}
	}
	if ifs, err := net.Interfaces(); err == nil {
		for _, i := range ifs {
			if stale(i.Name) {
				_ = exec.Command("ip", "link", "del", i.Name).Run()
			}
		}
	}
}

// link is the registry's namespace and the veth pair to it: the registry
// end (in the namespace) is shaped to rate bits/s, so downloads from the
// registry cross a link of that rate; the root namespace's end carries the
// requests.
type link struct {
	ns       string // namespace of the registry
	hostVeth string // the root namespace's end
	hostIP   string
	regIP    string
}

func newLink(t *testing.T, rate int64) *link {
	t.Helper()
	sub := freeSubnet(t)
	l := &link{ns: prefix + "r", hostVeth: prefix + "h",
		hostIP: fmt.Sprintf("10.%d.0.1", sub), regIP: fmt.Sprintf("10.%d.0.2", sub)}
	t.Cleanup(func() {
		_ = exec.Command("ip", "link", "del", l.hostVeth).Run()
		if out, err := exec.Command("ip", "netns", "del", l.ns).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v %s", l.ns, err, out)
		}
	})
	must(t, "ip", "netns", "add", l.ns)
	must(t, "ip", "link", "add", l.hostVeth, "type", "veth", "peer", "name", "eth0", "netns", l.ns)
	must(t, "ip", "addr", "add", l.hostIP+"/30", "dev", l.hostVeth)
	must(t, "ip", "link", "set", l.hostVeth, "up")
	must(t, "ip", "-n", l.ns, "addr", "add", l.regIP+"/30", "dev", "eth0")
	must(t, "ip", "-n", l.ns, "link", "set", "eth0", "up")
	must(t, "ip", "-n", l.ns, "link", "set", "lo", "up")
	burst := max(256<<10, rate/8/500)
	must(t, "tc", "-n", l.ns, "qdisc", "add", "dev", "eth0", "root", "tbf",
		"rate", fmt.Sprintf("%dbit", rate), "burst", strconv.FormatInt(burst, 10), "latency", "50ms")
	return l
}

// freeSubnet picks a 10.x.0.0/16 that no address of the machine is in.
func freeSubnet(t *testing.T) int {
	t.Helper()
	out, err := exec.Command("ip", "-4", "addr").Output()
	if err != nil {
		t.Fatal(err)
	}
	for x := 200 + os.Getpid()%40; x < 250; x++ {
		if !strings.Contains(string(out), fmt.Sprintf("inet 10.%d.", x)) {
			return x
		}
	}
	t.Fatal("no free 10.x.0.0/16")
	return 0
}

// rxBytes is how many bytes the registry has sent over the link (frames
// received by the root namespace's end, headers included).
func (l *link) rxBytes(t *testing.T) int64 {
	t.Helper()
	b, err := os.ReadFile("/sys/class/net/" + l.hostVeth + "/statistics/rx_bytes")
	if err != nil {
		t.Fatal(err)
	}
	n, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func must(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// startRegistry runs docker-registry inside the link's namespace and
// returns its address (registry IP:5000), reachable from the root namespace.
func startRegistry(t *testing.T, l *link) string {
	t.Helper()
	dir := t.TempDir()
	addr := l.regIP + ":5000"
	config := fmt.Sprintf(`version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: %s
http:
  addr: %s
  secret: thaw-lazy
`, filepath.Join(dir, "data"), addr)
	cfg := filepath.Join(dir, "config.yml")
	if err := os.WriteFile(cfg, []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	p := testenv.Start(t, dir, "docker-registry", l.ns, testenv.CleanEnv(), "docker-registry", "serve", cfg)
	p.WaitFor(t, "answering /v2/", 20*time.Second, func() error { return get("http://" + addr + "/v2/") })
	return addr
}

func get(url string) error {
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := c.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return nil
}

// The containerd and image helpers shared with integration/cluster.
type (
	ctrd    = testenv.Containerd
	pyImage = testenv.PyImage
)

const readyLine = testenv.ReadyLine

var (
	fuseMounts  = testenv.FUSEMounts
	imageSize   = testenv.ImageSize
	smallPython = testenv.SmallPython
)

// shortDir is a temporary directory with a short path, for unix sockets.
func shortDir(t *testing.T) string { return testenv.ShortDir(t, "thl") }

// startContainerd starts a containerd in the test's namespace whose stargz
// proxy snapshotter is at snapshotterSocket.
func startContainerd(t *testing.T, snapshotterSocket string) *ctrd {
	return testenv.StartContainerd(t, "", snapshotterSocket)
}

// convert runs `thaw convert --record`; see testenv.Convert.
func convert(t *testing.T, plain, esgz, sock string) (string, int, time.Duration) {
	return testenv.Convert(t, thawBin, plain, esgz, sock)
}

// thaw is a `thaw daemon` with the stargz snapshotter on.
type thaw struct {
	dataDir, api, mirror, metrics, socket string
	proc                                  *testenv.Process
	args                                  []string
	dir                                   string
}

// startThaw starts a daemon whose snapshotter listens on socket. The
// registry reg is reached over plain HTTP; extra are further flags.
func startThaw(t *testing.T, dataDir, socket, reg string, extra ...string) *thaw {
	t.Helper()
	d := &thaw{
		dir:     t.TempDir(),
		dataDir: dataDir,
		api:     filepath.Join(shortDir(t), "thaw.sock"),
		mirror:  fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t)),
		metrics: fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t)),
		socket:  socket,
	}
	d.args = append([]string{"daemon", "--data-dir", d.dataDir, "--api", d.api,
		"--mirror-addr", d.mirror, "--metrics-addr", d.metrics,
		"--insecure-registry", reg, "--snapshotter-socket", socket, "--log-level", "debug"}, extra...)
	d.start(t)
	return d
}

func (d *thaw) start(t *testing.T) {
	t.Helper()
	dockerConfig := filepath.Join(d.dir, "docker-config")
	_ = os.MkdirAll(dockerConfig, 0o755)
	d.proc = testenv.Start(t, d.dir, "thaw", "", testenv.CleanEnv("DOCKER_CONFIG="+dockerConfig), thawBin, d.args...)
	d.proc.WaitFor(t, "serving the mirror, metrics and the snapshotter socket", 60*time.Second, func() error {
		if err := get("http://" + d.mirror + "/v2/"); err != nil {
			return err
		}
		if err := get("http://" + d.metrics + "/metrics"); err != nil {
			return err
		}
		c, err := net.Dial("unix", d.socket)
		if err != nil {
			return err
		}
		return c.Close()
	})
}

// scrape returns thaw's metrics as series (name{labels}) → value.
func (d *thaw) scrape(t *testing.T) map[string]float64 {
	t.Helper()
	resp, err := http.Get("http://" + d.metrics + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	series := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if v, err := strconv.ParseFloat(line[i+1:], 64); err == nil {
			series[line[:i]] = v
		}
	}
	return series
}
