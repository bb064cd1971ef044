//go:build e2e

package lazy

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/thaw-dev/thaw/integration/testenv"
)

// thawBin is the thaw binary under test, set by TestMain.
var thawBin string

// requiredTools are the host programs the tests run; e2e-deps.sh installs them.
var requiredTools = []string{"containerd", "ctr", "runc", "containerd-shim-runc-v2", "docker-registry", "ip", "tc", "nsenter", "ldd"}

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "lazy: these tests start containerd, mount FUSE and create network namespaces, so they need root")
		return 1
	}
	if missing := testenv.Missing(append(requiredTools, "/dev/fuse")...); len(missing) > 0 {
		fmt.Fprintf(os.Stderr, "lazy: missing %s; install them with integration/e2e-deps.sh\n", strings.Join(missing, ", "))
		return 1
	}
	removeLeftovers()
	binDir, err := os.MkdirTemp("", "thaw-lazy-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "lazy:", err)
		return 1
	}
	defer os.RemoveAll(binDir)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	if thawBin, err = testenv.BuildThaw(ctx, binDir); err != nil {
		fmt.Fprintln(os.Stderr, "lazy:", err)
		return 1
	}
	return m.Run()
}
