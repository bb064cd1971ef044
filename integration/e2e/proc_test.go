//go:build e2e

package e2e

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/thaw-dev/thaw/integration/testenv"
)

// The process helpers shared with the other end-to-end package.
type process = testenv.Process

var (
	runCmd   = testenv.RunCmd
	tail     = testenv.Tail
	cleanEnv = testenv.CleanEnv
)

// startProcess starts a service; see testenv.Start.
func startProcess(t *testing.T, dir, name string, env []string, bin string, args ...string) *process {
	return testenv.Start(t, dir, name, "", env, bin, args...)
}

// shortTempDir is a temporary directory with a short path, for unix sockets
// (their paths must stay under 108 bytes, and containerd appends to them).
func shortTempDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "thaw-e2e-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		unmountUnder(t, dir)
		if err := os.RemoveAll(dir); err != nil {
			t.Errorf("remove %s: %v", dir, err)
		}
	})
	return dir
}

// unmountUnder detaches every mount below dir, deepest first: what a
// container left behind when a test failed half way.
func unmountUnder(t *testing.T, dir string) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Logf("read mountinfo: %v", err)
		return
	}
	var points []string
	for line := range strings.SplitSeq(string(b), "\n") {
		fields := strings.Fields(line)
		if len(fields) > 4 && strings.HasPrefix(fields[4], dir+"/") {
			points = append(points, fields[4])
		}
	}
	for i := len(points) - 1; i >= 0; i-- {
		if err := syscall.Unmount(points[i], syscall.MNT_DETACH); err != nil && !errors.Is(err, syscall.EINVAL) {
			t.Logf("unmount %s: %v", points[i], err)
		}
	}
}

// killStrays kills, by pid, processes outside our process groups whose
// command line mentions marker: containerd's shims, which put themselves in
// their own group, for containers a failed test left running.
func killStrays(t *testing.T, marker string) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return
	}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || !bytes.Contains(b, []byte(marker)) {
			continue
		}
		t.Logf("killing leftover process %d: %s", pid, bytes.ReplaceAll(b, []byte{0}, []byte{' '}))
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
}
