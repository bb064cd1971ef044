package testenv

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/containerd/stargz-snapshotter/fs/source"
)

// ShortDir is a temporary directory with a short path (/tmp/<prefix>...),
// for unix sockets (their paths must stay under 108 bytes), removed when
// the test ends.
func ShortDir(t testing.TB, prefix string) string {
	t.Helper()
	d, err := os.MkdirTemp("/tmp", prefix)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// Containerd is a containerd 1.6 with the stargz proxy snapshotter at a
// socket, optionally in a network namespace.
type Containerd struct {
	Sock string
	Root string
	Proc *Process
	// Dial, if set, dials the connections of Pull (a network namespace's
	// dialer, so that a mirror on that namespace's loopback is reachable
	// from the test); nil: the test's own namespace.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
}

// StartContainerd starts containerd inside network namespace netns (""
// for the test's own; see Start), with the stargz proxy snapshotter at
// snapshotterSocket unless it is "", and waits until it answers. The CRI
// plugin is off: the tests drive containerd with ctr and the client, and
// it would only add start-up time and CNI noise.
func StartContainerd(t testing.TB, netns, snapshotterSocket string) *Containerd {
	t.Helper()
	dir := ShortDir(t, "thc")
	c := &Containerd{Sock: filepath.Join(dir, "c.sock"), Root: filepath.Join(dir, "root")}
	config := fmt.Sprintf(`version = 2
root = %q
state = %q
disabled_plugins = ["io.containerd.grpc.v1.cri"]

[grpc]
  address = %q

[ttrpc]
  address = %q

[plugins."io.containerd.internal.v1.opt"]
  path = %q
`, c.Root, filepath.Join(dir, "state"), c.Sock, c.Sock+".ttrpc", filepath.Join(dir, "opt"))
	if snapshotterSocket != "" {
		// deploy/containerd's section, with the socket of the test's daemon.
		config += fmt.Sprintf(`
[proxy_plugins]
  [proxy_plugins.stargz]
    type = "snapshot"
    address = %q
`, snapshotterSocket)
	}
	cfg := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(cfg, []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { UnmountUnder(dir) })
	c.Proc = Start(t, t.TempDir(), "containerd", netns, CleanEnv(), "containerd", "-c", cfg)
	c.Proc.WaitFor(t, "answering ctr version", 30*time.Second, func() error {
		_, err := c.Ctr(10*time.Second, "version")
		return err
	})
	return c
}

// Ctr runs a ctr command against c in namespace default.
func (c *Containerd) Ctr(timeout time.Duration, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return RunCmd(ctx, CleanEnv(), "ctr", append([]string{"-a", c.Sock, "-n", "default"}, args...)...)
}

// Pull pulls ref and unpacks it into snapshotter, with every request sent
// to mirror (host:port over plain HTTP; for the registry itself, its
// address). For the stargz snapshotter it adds the labels with which the
// snapshotter mounts eStargz layers remotely, as `ctr-remote images rpull`
// does (the CRI plugin adds equivalent ones).
func (c *Containerd) Pull(ctx context.Context, ref, mirror, snapshotter string) error {
	client, err := containerd.New(c.Sock, containerd.WithDefaultNamespace("default"))
	if err != nil {
		return err
	}
	defer client.Close()
	// No connection outlives the pull (the cluster tests check for leaked
	// goroutines).
	tr := &http.Transport{DialContext: c.Dial}
	defer tr.CloseIdleConnections()
	resolver := docker.NewResolver(docker.ResolverOptions{Hosts: func(string) ([]docker.RegistryHost, error) {
		return []docker.RegistryHost{{Client: &http.Client{Transport: tr}, Host: mirror, Scheme: "http", Path: "/v2",
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

// Run runs ref in a new container with snapshotter until it exits, and
// returns when the container printed a line containing ready and its whole
// output. It fails the test if the container fails or never prints ready.
func (c *Containerd) Run(t testing.TB, ref, snapshotter, ready string) (readyAt time.Time, out string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	readyAt, out, err := c.RunErr(ctx, ref, snapshotter, ready)
	if err != nil {
		t.Fatal(err)
	}
	return readyAt, out
}

// RunErr is Run returning its error, for goroutines other than the test's.
func (c *Containerd) RunErr(ctx context.Context, ref, snapshotter, ready string) (readyAt time.Time, out string, err error) {
	// Unique among containerds that run side by side: runc's state and the
	// cgroups are per namespace and id, not per containerd.
	id := fmt.Sprintf("lazy-%s-%d", filepath.Base(filepath.Dir(c.Sock)), time.Now().UnixNano())
	cmd := exec.CommandContext(ctx, "ctr", "-a", c.Sock, "-n", "default", "run", "--rm", "--snapshotter", snapshotter, ref, id)
	cmd.Env = CleanEnv()
	cmd.WaitDelay = 5 * time.Second
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return readyAt, "", err
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		return readyAt, "", err
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
		return readyAt, b.String(), fmt.Errorf("ctr run %s (%s): %w\n%s%s", ref, snapshotter, err, b.String(), stderr.String())
	}
	if readyAt.IsZero() {
		return readyAt, b.String(), fmt.Errorf("ctr run %s (%s): no %q line in its output:\n%s%s", ref, snapshotter, ready, b.String(), stderr.String())
	}
	return readyAt, b.String(), nil
}

// RemoteSnapshots counts the committed snapshots of the stargz snapshotter
// that it mounted remotely (label containerd.io/snapshot/remote), and all
// its committed snapshots.
func (c *Containerd) RemoteSnapshots(t testing.TB) (remote, all int) {
	t.Helper()
	out, err := c.Ctr(30*time.Second, "snapshots", "--snapshotter", "stargz", "ls")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(out, "\n")[1:] {
		f := strings.Fields(line) // KEY [PARENT] KIND
		if len(f) < 2 || f[len(f)-1] != "Committed" {
			continue
		}
		all++
		info, err := c.Ctr(30*time.Second, "snapshots", "--snapshotter", "stargz", "info", f[0])
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(info, `"containerd.io/snapshot/remote"`) {
			remote++
		}
	}
	return remote, all
}

// FUSEMounts counts the FUSE mounts below dir.
func FUSEMounts(t testing.TB, dir string) int {
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

// UnmountUnder detaches whatever is still mounted under dir (containers'
// rootfs, FUSE layers) so that the temp dir can be removed.
func UnmountUnder(dir string) {
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
