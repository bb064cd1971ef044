// Package testenv holds what thaw's end-to-end test packages
// (integration/e2e, integration/cluster) share: services started in a process
// group of their own, optionally inside a network namespace, and stopped when
// the test ends, also on failure; short commands; log tails.
package testenv

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
	"strings"
	"syscall"
	"testing"
	"time"
)

// Process is a service a test started in a process group of its own, so that
// stopping it also stops whatever it forked.
type Process struct {
	Name string
	Cmd  *exec.Cmd
	Log  string // stdout and stderr
	done chan struct{}
	err  error // set when done is closed
}

// Start starts bin in its own process group, inside network namespace
// netns unless it is empty, with output to <dir>/<name>.log, and registers a
// cleanup that stops it (and prints the log's tail if the test failed or
// THAW_E2E_LOGS is set).
//
// nsenter --net switches only the network namespace and then execs bin, so
// the pid is bin's and /sys stays the root namespace's mount (ip netns exec
// would remount it). Pdeathsig kills the process if the test binary dies
// without running its cleanups (a go test -timeout panic).
func Start(t testing.TB, dir, name, netns string, env []string, bin string, args ...string) *Process {
	t.Helper()
	logPath := filepath.Join(dir, name+".log")
	f, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	if netns != "" {
		args = append([]string{"--net=" + "/var/run/netns/" + netns, "--", bin}, args...)
		bin = "nsenter"
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Env = env
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		f.Close()
		t.Fatalf("start %s: %v", name, err)
	}
	p := &Process{Name: name, Cmd: cmd, Log: logPath, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		f.Close()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.Stop(t)
		if t.Failed() || os.Getenv("THAW_E2E_LOGS") != "" {
			t.Logf("--- last lines of %s (%s) ---\n%s", name, logPath, Tail(logPath, 40))
		}
	})
	return p
}

// Stop sends SIGTERM to the process group and, after 10 s, SIGKILL. It is a
// no-op once the process has exited.
func (p *Process) Stop(t testing.TB) {
	t.Helper()
	p.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return
	case <-time.After(10 * time.Second):
		t.Logf("%s did not exit 10 s after SIGTERM; killing it", p.Name)
	}
	p.Kill(t)
}

// Kill sends SIGKILL to the process group and waits for the process to exit:
// a crash, not a shutdown.
func (p *Process) Kill(t testing.TB) {
	t.Helper()
	p.Signal(syscall.SIGKILL)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		t.Errorf("%s (pid %d) survived SIGKILL", p.Name, p.Cmd.Process.Pid)
	}
}

func (p *Process) Signal(sig syscall.Signal) {
	select {
	case <-p.done:
		return
	default:
	}
	// The group id is the leader's pid (Setpgid).
	_ = syscall.Kill(-p.Cmd.Process.Pid, sig)
}

// Exited reports whether the process has exited, and how.
func (p *Process) Exited() (bool, error) {
	select {
	case <-p.done:
		return true, p.err
	default:
		return false, nil
	}
}

// WaitFor polls check until it returns nil, the process exits, or timeout.
func (p *Process) WaitFor(t testing.TB, what string, timeout time.Duration, check func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := check()
		if err == nil {
			return
		}
		if done, exitErr := p.Exited(); done {
			t.Fatalf("%s exited (%v) before %s; its log:\n%s", p.Name, exitErr, what, Tail(p.Log, 40))
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %s not within %s: %v; its log:\n%s", p.Name, what, timeout, err, Tail(p.Log, 40))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// RunCmd runs a short-lived command and returns its combined output.
func RunCmd(ctx context.Context, env []string, bin string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = env
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %w\n%s", filepath.Base(bin), strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// Tail returns the last n lines of a file.
func Tail(path string, n int) string {
	f, err := os.Open(path)
	if err != nil {
		return err.Error()
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		lines = append(lines, sc.Text())
		if len(lines) > n {
			lines = lines[1:]
		}
	}
	return strings.Join(lines, "\n")
}

// CleanEnv is the environment for the services: this process's, without
// THAW_* variables that would configure the daemon behind the test's back.
func CleanEnv(extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "THAW_") {
			env = append(env, kv)
		}
	}
	return append(env, extra...)
}

// Missing returns which of the host programs (looked up on PATH) and files
// (absolute paths) the tests need are not there.
func Missing(needs ...string) []string {
	var out []string
	for _, n := range needs {
		var err error
		if filepath.IsAbs(n) {
			_, err = os.Stat(n)
		} else {
			_, err = exec.LookPath(n)
		}
		if err != nil {
			out = append(out, n)
		}
	}
	return out
}

// BuildThaw returns the thaw binary the tests run: $THAW_E2E_BIN if set,
// else one built from this module into dir.
func BuildThaw(ctx context.Context, dir string) (string, error) {
	if bin := os.Getenv("THAW_E2E_BIN"); bin != "" {
		return bin, nil
	}
	bin := filepath.Join(dir, "thaw")
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-o", bin, "github.com/thaw-dev/thaw/cmd/thaw")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build thaw: %w\n%s", err, out)
	}
	return bin, nil
}

// FreePort returns a loopback TCP port that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// HTTPClient makes the tests' own HTTP calls. It keeps no idle connections,
// so that no connection goroutine outlives a test (goleak checks).
var HTTPClient = &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 30 * time.Second}

// HTTPGet returns the status and body of GET url.
func HTTPGet(url string) (int, string, error) {
	resp, err := HTTPClient.Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// WantStatus200 is a readiness check: GET url answers 200.
func WantStatus200(url string) func() error {
	return func() error {
		code, body, err := HTTPGet(url)
		if err != nil {
			return err
		}
		if code != http.StatusOK {
			return fmt.Errorf("GET %s: %d %s", url, code, body)
		}
		return nil
	}
}
