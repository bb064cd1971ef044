//go:build e2e

package lazy

import (
	"bufio"
	"context"
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
	"syscall"
	"testing"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/containerd/stargz-snapshotter/fs/source"

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

// shortDir is a temporary directory with a short path, for unix sockets.
func shortDir(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("/tmp", "thl")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
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

// ctrd is a containerd 1.6 with the stargz proxy snapshotter at socket.
type ctrd struct {
	sock string
	root string
	proc *testenv.Process
}

func startContainerd(t *testing.T, snapshotterSocket string) *ctrd {
	t.Helper()
	dir := shortDir(t)
	c := &ctrd{sock: filepath.Join(dir, "c.sock"), root: filepath.Join(dir, "root")}
	// The proxy_plugins section is deploy/containerd's, with the socket
	// of the test's daemon.
	config := fmt.Sprintf(`version = 2
root = %q
state = %q
disabled_plugins = ["io.containerd.grpc.v1.cri"]

[grpc]
  address = %q

[ttrpc]
  address = %q

[proxy_plugins]
  [proxy_plugins.stargz]
    type = "snapshot"
    address = %q
`, c.root, filepath.Join(dir, "state"), c.sock, c.sock+".ttrpc", snapshotterSocket)
	cfg := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(cfg, []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unmountUnder(t, dir) })
	c.proc = testenv.Start(t, t.TempDir(), "containerd", "", testenv.CleanEnv(), "containerd", "-c", cfg)
	c.proc.WaitFor(t, "answering ctr version", 30*time.Second, func() error {
		_, err := c.ctr(10*time.Second, "version")
		return err
	})
	return c
}

func (c *ctrd) ctr(timeout time.Duration, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return testenv.RunCmd(ctx, testenv.CleanEnv(), "ctr", append([]string{"-a", c.sock, "-n", "default"}, args...)...)
}

// pull pulls ref and unpacks it into snapshotter, with every request sent
// to mirror (host:port over plain HTTP; for the registry itself, its
// address). For the stargz snapshotter it adds the labels with which the
// snapshotter mounts eStargz layers remotely, as `ctr-remote images rpull`
// does (the CRI plugin adds equivalent ones).
func (c *ctrd) pull(ctx context.Context, ref, mirror, snapshotter string) error {
	client, err := containerd.New(c.sock, containerd.WithDefaultNamespace("default"))
	if err != nil {
		return err
	}
	defer client.Close()
	resolver := docker.NewResolver(docker.ResolverOptions{Hosts: func(string) ([]docker.RegistryHost, error) {
		return []docker.RegistryHost{{Client: &http.Client{}, Host: mirror, Scheme: "http", Path: "/v2",
			Capabilities: docker.HostCapabilityPull | docker.HostCapabilityResolve}}, nil
	}})
	opts := []containerd.RemoteOpt{containerd.WithResolver(resolver), containerd.WithPullUnpack, containerd.WithPullSnapshotter(snapshotter)}
	if snapshotter == "stargz" {
		opts = append(opts, containerd.WithImageHandlerWrapper(source.AppendDefaultLabelsHandlerWrapper(ref, 0)))
	}
	if _, err := client.Pull(ctx, ref, opts...); err != nil {
		return fmt.Errorf("pull %s into %s through %s: %w", ref, snapshotter, mirror, err)
	}
	return nil
}

// runUntil runs ref in a new container with snapshotter and returns when
// the container prints a line containing ready (and the container's whole
// output once it exits).
func (c *ctrd) run(t *testing.T, ref, snapshotter, ready string) (readyAt time.Time, out string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	id := fmt.Sprintf("lazy-%d", time.Now().UnixNano())
	cmd := exec.CommandContext(ctx, "ctr", "-a", c.sock, "-n", "default", "run", "--rm", "--snapshotter", snapshotter, ref, id)
	cmd.Env = testenv.CleanEnv()
	cmd.WaitDelay = 5 * time.Second
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		b.WriteString(sc.Text() + "\n")
		if readyAt.IsZero() && strings.Contains(sc.Text(), ready) {
			readyAt = time.Now()
		}
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("ctr run %s (%s): %v\n%s%s", ref, snapshotter, err, b.String(), stderr.String())
	}
	if readyAt.IsZero() {
		t.Fatalf("ctr run %s (%s): no %q line in its output:\n%s%s", ref, snapshotter, ready, b.String(), stderr.String())
	}
	return readyAt, b.String()
}

// remoteSnapshots counts the committed snapshots of the stargz snapshotter
// that it mounted remotely (label containerd.io/snapshot/remote), and all
// its committed snapshots.
func (c *ctrd) remoteSnapshots(t *testing.T) (remote, all int) {
	t.Helper()
	out, err := c.ctr(30*time.Second, "snapshots", "--snapshotter", "stargz", "ls")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(out, "\n")[1:] {
		f := strings.Fields(line) // KEY [PARENT] KIND
		if len(f) < 2 || f[len(f)-1] != "Committed" {
			continue
		}
		all++
		info, err := c.ctr(30*time.Second, "snapshots", "--snapshotter", "stargz", "info", f[0])
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(info, `"containerd.io/snapshot/remote"`) {
			remote++
		}
	}
	return remote, all
}

// fuseMounts counts the FUSE mounts below dir.
func fuseMounts(t *testing.T, dir string) int {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for line := range strings.SplitSeq(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 10 || !strings.HasPrefix(f[4], dir) {
			continue
		}
		for i := 6; i < len(f)-1; i++ {
			if f[i] == "-" && strings.HasPrefix(f[i+1], "fuse") {
				n++
			}
		}
	}
	return n
}

// unmountUnder detaches whatever is still mounted under dir (containers'
// rootfs, FUSE layers) so that the temp dir can be removed.
func unmountUnder(t *testing.T, dir string) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return
	}
	lines := strings.Split(string(b), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		f := strings.Fields(lines[i])
		if len(f) > 4 && strings.HasPrefix(f[4], dir) {
			_ = syscall.Unmount(f[4], syscall.MNT_DETACH)
		}
	}
}
