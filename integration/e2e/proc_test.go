//go:build e2e

package e2e

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
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
