package snapshotter_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/proxy"
	"github.com/containerd/containerd/v2/pkg/reference"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/thaw-dev/thaw/lazyload/snapshotter"
	"github.com/thaw-dev/thaw/metrics"
)

func TestConfigValidate(t *testing.T) {
	good := snapshotter.Config{Root: "/r", Socket: "/s.sock", Mirror: "http://127.0.0.1:5050"}
	if err := good.Validate(); err != nil {
		t.Fatal(err)
	}
	for name, c := range map[string]snapshotter.Config{
		"no root":       {Socket: "/s", Mirror: good.Mirror},
		"no socket":     {Root: "/r", Mirror: good.Mirror},
		"mirror scheme": {Root: "/r", Socket: "/s", Mirror: "127.0.0.1:5050"},
		"mirror ftp":    {Root: "/r", Socket: "/s", Mirror: "ftp://host"},
	} {
		if err := c.Validate(); err == nil {
			t.Errorf("%s: accepted %+v", name, c)
		}
	}
}

// TestMirrorHostsSendsEveryRegistryToTheMirror: whatever registry a
// reference names, its reads go to the mirror, over the mirror's scheme.
func TestMirrorHostsSendsEveryRegistryToTheMirror(t *testing.T) {
	hosts, err := snapshotter.MirrorHosts("http://127.0.0.1:5050")
	if err != nil {
		t.Fatal(err)
	}
	for _, ref := range []string{"docker.io/library/python:3", "registry.example.com:5000/app:v1"} {
		spec, err := reference.Parse(ref)
		if err != nil {
			t.Fatal(err)
		}
		hs, err := hosts(spec)
		if err != nil {
			t.Fatal(err)
		}
		if len(hs) != 1 || hs[0].Host != "127.0.0.1:5050" || hs[0].Scheme != "http" || hs[0].Path != "/v2" {
			t.Errorf("%s: hosts %+v, want only http://127.0.0.1:5050/v2", ref, hs)
		}
	}
	if _, err := snapshotter.MirrorHosts("127.0.0.1:5050"); err == nil {
		t.Error("a mirror without scheme was accepted")
	}
}

// TestServiceLifecycle: the service answers containerd's snapshots API on
// its socket, refuses a second instance on the same socket, and when
// stopped removes the socket.
func TestServiceLifecycle(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("the stargz snapshotter needs root (overlay and FUSE)")
	}
	dir := t.TempDir()
	cfg := snapshotter.Config{Root: filepath.Join(dir, "root"), Socket: filepath.Join(dir, "s.sock"), Mirror: "http://127.0.0.1:1"}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	svc, err := snapshotter.New(cfg, metrics.NewLazyload(prometheus.NewRegistry()), log)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- svc.Run(ctx) }()

	conn, err := grpc.NewClient("unix://"+cfg.Socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	sn := proxy.NewSnapshotter(snapshotsapi.NewSnapshotsClient(conn), "stargz")
	cctx, ccancel := context.WithTimeout(ctx, 10*time.Second)
	defer ccancel()
	// A plain (not remote) snapshot works as with overlayfs.
	if _, err := sn.Prepare(cctx, "active", ""); err != nil {
		t.Fatalf("prepare over the socket: %v", err)
	}
	n := 0
	if err := sn.Walk(cctx, func(context.Context, snapshots.Info) error { n++; return nil }); err != nil || n != 1 {
		t.Fatalf("walk: %d snapshots, %v", n, err)
	}

	_, err = snapshotter.New(cfg, metrics.NewLazyload(prometheus.NewRegistry()), log)
	if err == nil || !strings.Contains(err.Error(), "another snapshotter") {
		t.Errorf("second snapshotter on the same socket: err = %v", err)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Run did not return 20 s after its context was cancelled")
	}
	if _, err := os.Stat(cfg.Socket); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket still there after Run: %v", err)
	}
}
