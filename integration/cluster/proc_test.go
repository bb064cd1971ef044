//go:build e2e

package cluster

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// process is a service a test started in a process group of its own, so that
// stopping it also stops whatever it forked. (Adapted from integration/e2e.)
type process struct {
	name string
	cmd  *exec.Cmd
	log  string // stdout and stderr
	done chan struct{}
	err  error // set when done is closed
}

// startProcess starts bin in its own process group, inside network namespace
// netns unless it is empty, with output to <dir>/<name>.log, and registers a
// cleanup that stops it (and prints the log's tail if the test failed or
// THAW_E2E_LOGS is set).
//
// nsenter --net switches only the network namespace and then execs bin, so
// the pid is bin's and /sys stays the root namespace's mount (ip netns exec
// would remount it). Pdeathsig kills the process if the test binary dies
// without running its cleanups (a go test -timeout panic).
func startProcess(t *testing.T, dir, name, netns string, env []string, bin string, args ...string) *process {
	t.Helper()
	logPath := filepath.Join(dir, name+".log")
	f, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	if netns != "" {
		args = append([]string{"--net=" + netnsPath(netns), "--", bin}, args...)
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
	p := &process{name: name, cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		f.Close()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.stop(t)
		if t.Failed() || os.Getenv("THAW_E2E_LOGS") != "" {
			t.Logf("--- last lines of %s (%s) ---\n%s", name, logPath, tail(logPath, 40))
		}
	})
	return p
}

// stop sends SIGTERM to the process group and, after 10 s, SIGKILL. It is a
// no-op once the process has exited.
func (p *process) stop(t *testing.T) {
	t.Helper()
	p.signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return
	case <-time.After(10 * time.Second):
		t.Logf("%s did not exit 10 s after SIGTERM; killing it", p.name)
	}
	p.kill(t)
}

// kill sends SIGKILL to the process group and waits for the process to exit:
// a crash, not a shutdown.
func (p *process) kill(t *testing.T) {
	t.Helper()
	p.signal(syscall.SIGKILL)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		t.Errorf("%s (pid %d) survived SIGKILL", p.name, p.cmd.Process.Pid)
	}
}

func (p *process) signal(sig syscall.Signal) {
	select {
	case <-p.done:
		return
	default:
	}
	// The group id is the leader's pid (Setpgid).
	_ = syscall.Kill(-p.cmd.Process.Pid, sig)
}

// exited reports whether the process has exited, and how.
func (p *process) exited() (bool, error) {
	select {
	case <-p.done:
		return true, p.err
	default:
		return false, nil
	}
}

// waitFor polls check until it returns nil, the process exits, or timeout.
func (p *process) waitFor(t *testing.T, what string, timeout time.Duration, check func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := check()
		if err == nil {
			return
		}
		if done, exitErr := p.exited(); done {
			t.Fatalf("%s exited (%v) before %s; its log:\n%s", p.name, exitErr, what, tail(p.log, 40))
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %s not within %s: %v; its log:\n%s", p.name, what, timeout, err, tail(p.log, 40))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// poll calls check until it returns nil or timeout passes, and returns its
// last error.
func poll(timeout, every time.Duration, check func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := check()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(every)
	}
}

// runCmd runs a short-lived command and returns its combined output.
func runCmd(ctx context.Context, env []string, bin string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = env
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %w\n%s", filepath.Base(bin), strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// runOut runs a short-lived command and returns its standard output alone
// (JSON), with standard error in the error.
func runOut(ctx context.Context, env []string, bin string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = env
	cmd.WaitDelay = 5 * time.Second
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %w\n%s%s", filepath.Base(bin), strings.Join(args, " "), err, out, stderr.String())
	}
	return string(out), nil
}

// tail returns the last n lines of a file.
func tail(path string, n int) string {
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

// grepFile returns the lines of path that contain any of subs.
func grepFile(path string, subs ...string) []string {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	var out []string
	for line := range strings.SplitSeq(string(b), "\n") {
		for _, s := range subs {
			if strings.Contains(line, s) {
				out = append(out, line)
				break
			}
		}
	}
	return out
}

// cleanEnv is the environment for the services: this process's, without
// THAW_* variables that would configure the daemon behind the test's back.
func cleanEnv(extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "THAW_") {
			env = append(env, kv)
		}
	}
	return append(env, extra...)
}
