//go:build e2e

package cluster

import (
	"context"
	"fmt"
	"github.com/thaw-dev/thaw/integration/testenv"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The process helpers shared with the other end-to-end package.
type process = testenv.Process

var (
	runCmd   = testenv.RunCmd
	tail     = testenv.Tail
	cleanEnv = testenv.CleanEnv
)

// startProcess starts a service inside network namespace netns ("" for
// the root one); see testenv.Start.
func startProcess(t *testing.T, dir, name, netns string, env []string, bin string, args ...string) *process {
	return testenv.Start(t, dir, name, netns, env, bin, args...)
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
