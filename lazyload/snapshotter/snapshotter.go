package snapshotter

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/v2/contrib/snapshotservice"
	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/pkg/reference"
	"github.com/containerd/stargz-snapshotter/fs/source"
	"github.com/containerd/stargz-snapshotter/service"
	"github.com/containerd/stargz-snapshotter/snapshot"
	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"

	"github.com/thaw-dev/thaw/metrics"
)

// Config is what the embedded snapshotter needs.
type Config struct {
	// Root holds the snapshots, the FUSE mount points and the
	// snapshotter's chunk cache.
	Root string
	// Socket is the unix socket containerd's proxy plugin dials.
	Socket string
	// Mirror is the URL every registry read goes to (the node mirror,
	// http://127.0.0.1:5050); the registry a reference names travels as
	// ?ns=<registry>. Only http and https URLs.
	Mirror string
	// ShutdownTimeout bounds how long Run waits for calls in flight when it
	// stops (default 5 s).
	ShutdownTimeout time.Duration
}

// Validate says what is missing or wrong in c.
func (c Config) Validate() error {
	if c.Root == "" {
		return errors.New("snapshotter: root directory is empty")
	}
	if c.Socket == "" {
		return errors.New("snapshotter: socket path is empty")
	}
	u, err := url.Parse(c.Mirror)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("snapshotter: mirror %q is not an http:// or https:// URL", c.Mirror)
	}
	return nil
}

// Service is the stargz snapshotter serving containerd's snapshots API on a
// unix socket.
type Service struct {
	cfg   Config
	log   *slog.Logger
	m     *metrics.Lazyload
	hosts source.RegistryHosts
	ln    net.Listener
	once  sync.Once
	// set by start, in Run
	sn  snapshots.Snapshotter
	srv *grpc.Server
}

// New prepares cfg.Root (detaching FUSE mounts a killed earlier run left)
// and listens on cfg.Socket; Run creates the snapshotter and serves. New
// refuses to start beside a live snapshotter on the same socket.
func New(cfg Config, m *metrics.Lazyload, log *slog.Logger) (*Service, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.ShutdownTimeout <= 0 {
		cfg.ShutdownTimeout = 5 * time.Second
	}
	hosts, err := MirrorHosts(cfg.Mirror)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.Root, 0o700); err != nil {
		return nil, fmt.Errorf("snapshotter root: %w", err)
	}
	if err := removeStaleSocket(cfg.Socket); err != nil {
		return nil, err
	}
	// FUSE mounts of a killed earlier run answer every call with ENOTCONN;
	// detach them before the snapshotter walks its directories.
	if n, err := unmountUnder(cfg.Root); err != nil {
		return nil, err
	} else if n > 0 {
		log.Info("detached FUSE mounts left by an earlier run", "count", n, "root", cfg.Root)
	}
	ln, err := net.Listen("unix", cfg.Socket)
	if err != nil {
		return nil, fmt.Errorf("snapshotter socket: %w", err)
	}
	return &Service{cfg: cfg, log: log, m: m, hosts: hosts, ln: ln}, nil
}

// start creates the snapshotter. It runs in Run, not New, because a
// snapshotter restores the lazy mounts of an earlier run as it starts, and
// that reads from the mirror, which serves only once the daemon runs.
func (s *Service) start(ctx context.Context) error {
	// No background fetch of whole layers by the snapshotter: the mirror
	// fills in the rest of a blob read by range at its own bounded rate
	// (thaw daemon --background-rate); the snapshotter's fetcher would read
	// it all at once through the mirror, as demand.
	sc := &service.Config{}
	sc.NoBackgroundFetch = true
	fsys, err := service.NewFileSystem(ctx, s.cfg.Root, sc, service.WithCustomRegistryHosts(s.hosts))
	if err != nil {
		return fmt.Errorf("stargz file system: %w", err)
	}
	// The same layout as service.NewStargzSnapshotterService, with the file
	// system measured. A lazy mount that cannot be restored after a restart
	// (its registry gone) is left for containerd to remove instead of
	// failing the daemon's start.
	sn, err := snapshot.NewSnapshotter(ctx, filepath.Join(s.cfg.Root, "snapshotter"), measured(fsys, s.m, s.log),
		snapshot.AsynchronousRemove, snapshot.AllowInvalidMountsOnRestart)
	if err != nil {
		return fmt.Errorf("stargz snapshotter: %w", err)
	}
	s.sn = sn
	s.srv = grpc.NewServer()
	snapshotsapi.RegisterSnapshotsServer(s.srv, snapshotservice.FromSnapshotter(sn))
	return nil
}

// Socket is the path containerd dials.
func (s *Service) Socket() string { return s.cfg.Socket }

// Run serves until ctx is done, then stops: calls in flight get
// ShutdownTimeout, the lazy mounts are unmounted (containers still running
// on them lose their files, as with a stopped stargz snapshotter) and the
// socket is removed.
func (s *Service) Run(ctx context.Context) error {
	if err := s.start(ctx); err != nil {
		s.close()
		return err
	}
	s.log.Info("stargz snapshotter listening", "socket", s.cfg.Socket, "root", s.cfg.Root, "mirror", s.cfg.Mirror)
	errc := make(chan error, 1)
	go func() { errc <- s.srv.Serve(s.ln) }()
	select {
	case err := <-errc:
		s.close()
		return fmt.Errorf("snapshotter: %w", err)
	case <-ctx.Done():
	}
	stopped := make(chan struct{})
	go func() {
		s.srv.GracefulStop()
		close(stopped)
	}()
	select {
	case <-stopped:
	case <-time.After(s.cfg.ShutdownTimeout):
		s.srv.Stop()
		<-stopped
	}
	<-errc
	s.close()
	return nil
}

// Close releases what New took, for a Service whose Run is not called.
func (s *Service) Close() { s.close() }

// close releases what New took; safe to call more than once.
func (s *Service) close() {
	s.once.Do(func() {
		s.ln.Close()
		if s.sn != nil {
			if err := s.sn.Close(); err != nil {
				s.log.Warn("closing the stargz snapshotter", "err", err)
			}
		}
		if n, err := unmountUnder(s.cfg.Root); err != nil {
			s.log.Warn("unmounting lazy layers", "err", err)
		} else if n > 0 {
			s.log.Info("detached lazy mounts still in use", "count", n)
		}
		if err := os.Remove(s.cfg.Socket); err != nil && !errors.Is(err, os.ErrNotExist) {
			s.log.Warn("removing the snapshotter socket", "err", err)
		}
	})
}

// MirrorHosts returns registry hosts that send every request, for any
// registry, to the mirror at mirrorURL. The stargz fetcher adds
// ?ns=<registry> to the blob URLs it sends to a host that is not the
// reference's own, as containerd does for mirrors.
func MirrorHosts(mirrorURL string) (source.RegistryHosts, error) {
	u, err := url.Parse(mirrorURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("mirror %q is not an http:// or https:// URL", mirrorURL)
	}
	client := &http.Client{Transport: http.DefaultTransport.(*http.Transport).Clone()}
	path := strings.TrimSuffix(u.Path, "/") + "/v2"
	return func(reference.Spec) ([]docker.RegistryHost, error) {
		return []docker.RegistryHost{{
			Client:       client,
			Host:         u.Host,
			Scheme:       u.Scheme,
			Path:         path,
			Capabilities: docker.HostCapabilityPull | docker.HostCapabilityResolve,
		}}, nil
	}, nil
}

// removeStaleSocket removes a socket no process answers on, and refuses one
// that answers.
func removeStaleSocket(path string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("snapshotter socket directory: %w", err)
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return fmt.Errorf("snapshotter socket %s: another snapshotter is running", path)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("snapshotter socket %s: %w", path, err)
	}
	return nil
}

// unmountUnder detaches every FUSE mount below root, deepest first, and
// returns how many it detached.
func unmountUnder(root string) (int, error) {
	mounts, err := mountinfo.GetMounts(mountinfo.PrefixFilter(root))
	if err != nil {
		return 0, fmt.Errorf("reading mounts under %s: %w", root, err)
	}
	n := 0
	for i := len(mounts) - 1; i >= 0; i-- {
		m := mounts[i]
		if !strings.HasPrefix(m.FSType, "fuse") {
			continue
		}
		if err := unix.Unmount(m.Mountpoint, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			return n, fmt.Errorf("unmount %s: %w", m.Mountpoint, err)
		}
		n++
	}
	return n, nil
}
