//go:build e2e

package cluster

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/thaw-dev/thaw/integration/testenv"
)

// thawBin is the thaw binary under test, set by TestMain.
var thawBin string

// requiredTools are the host programs the tests run.
var requiredTools = []string{"ip", "tc", "nsenter", "iptables", "docker-registry"}

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "cluster: these tests create network namespaces, so they need root (sudo go test -tags e2e ./integration/cluster/)")
		return 1
	}
	if missing := testenv.Missing(requiredTools...); len(missing) > 0 {
		fmt.Fprintf(os.Stderr, "cluster: missing %s on PATH; install iproute2, util-linux, iptables and docker-registry (integration/e2e-deps.sh installs the registry)\n", strings.Join(missing, ", "))
		return 1
	}
	removeLeftovers(func(format string, args ...any) { fmt.Fprintf(os.Stderr, "cluster: "+format+"\n", args...) })

	binDir, err := os.MkdirTemp("", "thaw-cluster-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "cluster:", err)
		return 1
	}
	defer os.RemoveAll(binDir)

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	thawRev = thawRevision() // now: the tree may change while a long benchmark runs
	if thawBin, err = testenv.BuildThaw(ctx, binDir); err != nil {
		fmt.Fprintln(os.Stderr, "cluster:", err)
		return 1
	}

	code := m.Run()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "cluster: leaked goroutines:", err)
			return 1
		}
	}
	return code
}
