//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/thaw-dev/thaw/integration/testenv"
)

// Binaries every test uses, set by TestMain.
var (
	thawBin  string // the thaw binary under test
	helloBin string // the static entrypoint of the test image
)

// requiredTools are the host programs the tests run; e2e-deps.sh installs them.
var requiredTools = []string{"containerd", "ctr", "runc", "containerd-shim-runc-v2", "docker-registry"}

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "e2e: these tests start containerd and run containers, so they need root (sudo go test -tags e2e ./integration/e2e/)")
		return 1
	}
	if missing := testenv.Missing(requiredTools...); len(missing) > 0 {
		fmt.Fprintf(os.Stderr, "e2e: missing %s on PATH; install them with integration/e2e-deps.sh\n", strings.Join(missing, ", "))
		return 1
	}

	binDir, err := os.MkdirTemp("", "thaw-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	defer os.RemoveAll(binDir)

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if thawBin, err = testenv.BuildThaw(ctx, binDir); err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	if helloBin, err = buildHello(ctx, binDir); err != nil {
		fmt.Fprintln(os.Stderr, "e2e: build the test image's entrypoint:", err)
		return 1
	}

	code := m.Run()
	if code == 0 {
		// Every service a test started must be gone, and with it every
		// goroutine waiting on it.
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "e2e: leaked goroutines:", err)
			return 1
		}
	}
	return code
}

// helloSource is the test image's entrypoint: it proves that the container
// ran and that its data layer was unpacked intact by printing the data file's
// digest.
const helloSource = `package main

import (
	"crypto/sha256"
	"fmt"
	"os"
)

func main() {
	b, err := os.ReadFile("/usr/share/thaw-e2e/data.bin")
	if err != nil {
		fmt.Println("thaw-e2e error:", err)
		os.Exit(1)
	}
	fmt.Printf("thaw-e2e ready data=%x\n", sha256.Sum256(b))
}
`

// buildHello compiles helloSource as a static linux binary, in a module of
// its own so that it builds the same from any working directory.
func buildHello(ctx context.Context, binDir string) (string, error) {
	src := filepath.Join(binDir, "hello-src")
	if err := os.MkdirAll(src, 0o755); err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(src, "go.mod"), []byte("module hello\n\ngo 1.22\n"), 0o644); err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(src, "main.go"), []byte(helloSource), 0o644); err != nil {
		return "", err
	}
	out := filepath.Join(binDir, "hello")
	return out, goBuild(ctx, src, out, ".")
}

func goBuild(ctx context.Context, dir, out, pkg string) error {
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags=-s -w", "-o", out, pkg)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOFLAGS=")
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build %s: %w\n%s", pkg, err, b)
	}
	return nil
}
