package record

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"
	"unsafe"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/oci"
	"golang.org/x/sys/unix"
)

// Config says where and how to run the workload.
type Config struct {
	// Containerd is containerd's socket.
	Containerd string
	// Namespace is the containerd namespace the image and the container
	// go to (default "thaw-record"); the container and its snapshot are
	// removed afterwards, the image is kept.
	Namespace string
	// Insecure reaches the registry over plain HTTP.
	Insecure bool
	// Timeout ends the run if the workload has neither exited nor printed
	// Ready (default 60 s). Files opened until then are recorded.
	Timeout time.Duration
	// Ready, if set, ends the run at the first line of output containing
	// it: files opened later are not start-up files.
	Ready string
}

// Files pulls ref into containerd, runs its entrypoint once in a container
// and returns the files the workload opened or executed, as absolute paths
// inside the image, in the order of their first opening. The container's
// rootfs is watched with fanotify (FAN_MARK_FILESYSTEM on its overlay); it
// needs root.
func Files(ctx context.Context, ref string, cfg Config) ([]string, error) {
	if cfg.Namespace == "" {
		cfg.Namespace = "thaw-record"
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 60 * time.Second
	}
	client, err := containerd.New(cfg.Containerd, containerd.WithDefaultNamespace(cfg.Namespace))
	if err != nil {
		return nil, fmt.Errorf("containerd at %s: %w", cfg.Containerd, err)
	}
	defer client.Close()

	var ropts []docker.RegistryOpt
	if cfg.Insecure {
		ropts = append(ropts, docker.WithPlainHTTP(docker.MatchAllHosts))
	}
	resolver := docker.NewResolver(docker.ResolverOptions{Hosts: docker.ConfigureDefaultRegistries(ropts...)})
	const snapshotter = "overlayfs"
	img, err := client.Pull(ctx, ref, containerd.WithResolver(resolver), containerd.WithPullUnpack, containerd.WithPullSnapshotter(snapshotter))
	if err != nil {
		return nil, fmt.Errorf("pull %s: %w", ref, err)
	}
	id := fmt.Sprintf("thaw-record-%d", time.Now().UnixNano())
	container, err := client.NewContainer(ctx, id,
		containerd.WithSnapshotter(snapshotter), containerd.WithNewSnapshot(id, img),
		containerd.WithNewSpec(oci.WithImageConfig(img)))
	if err != nil {
		return nil, fmt.Errorf("create the container: %w", err)
	}
	defer container.Delete(context.WithoutCancel(ctx), containerd.WithSnapshotCleanup)

	out := newReadyWriter(cfg.Ready)
	task, err := container.NewTask(ctx, cio.NewCreator(cio.WithStreams(nil, out, out)))
	if err != nil {
		return nil, fmt.Errorf("create the task: %w", err)
	}
	defer task.Delete(context.WithoutCancel(ctx), containerd.WithProcessKill)
	// The task is created, not started: its rootfs is mounted in its own
	// mount namespace, reachable through its init's /proc root. Marking
	// that file system sees every open the workload makes, and only those.
	w, err := watch(fmt.Sprintf("/proc/%d/root", task.Pid()))
	if err != nil {
		return nil, err
	}
	defer w.close()
	exited, err := task.Wait(ctx)
	if err != nil {
		return nil, err
	}
	if err := task.Start(ctx); err != nil {
		return nil, fmt.Errorf("start the workload: %w", err)
	}
	timer := time.NewTimer(cfg.Timeout)
	defer timer.Stop()
	select {
	case st := <-exited:
		if code, _, err := st.Result(); err != nil || code != 0 {
			return nil, fmt.Errorf("the workload failed (exit %d, %v); its output:\n%s", code, err, out.String())
		}
	case <-out.ready:
	case <-timer.C:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	var rel []string
	for _, f := range w.stop() {
		if strings.HasPrefix(f, "/") && !strings.HasPrefix(f, "/proc/") {
			rel = append(rel, f)
		}
	}
	if len(rel) == 0 {
		return nil, errors.New("the workload opened no file of its image")
	}
	return rel, nil
}

// watcher reads fanotify events for one file system until stopped.
type watcher struct {
	fd    int
	done  chan struct{}
	wg    sync.WaitGroup
	mu    sync.Mutex
	seen  map[string]bool
	paths []string
}

func watch(dir string) (*watcher, error) {
	fd, err := unix.FanotifyInit(unix.FAN_CLASS_NOTIF|unix.FAN_CLOEXEC|unix.FAN_NONBLOCK, unix.O_RDONLY|unix.O_LARGEFILE)
	if err != nil {
		return nil, fmt.Errorf("fanotify: %w (recording needs root)", err)
	}
	if err := unix.FanotifyMark(fd, unix.FAN_MARK_ADD|unix.FAN_MARK_FILESYSTEM, unix.FAN_OPEN|unix.FAN_OPEN_EXEC, unix.AT_FDCWD, dir); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("fanotify mark %s: %w", dir, err)
	}
	w := &watcher{fd: fd, done: make(chan struct{}), seen: map[string]bool{}}
	w.wg.Add(1)
	go w.loop()
	return w, nil
}

func (w *watcher) loop() {
	defer w.wg.Done()
	buf := make([]byte, 64<<10)
	for {
		stopping := false
		select {
		case <-w.done:
			stopping = true
		default:
		}
		pfd := []unix.PollFd{{Fd: int32(w.fd), Events: unix.POLLIN}}
		if _, err := unix.Poll(pfd, 50); err != nil && !errors.Is(err, unix.EINTR) {
			return
		}
		n, err := unix.Read(w.fd, buf)
		if n > 0 {
			w.parse(buf[:n])
		}
		if stopping && (err != nil || n <= 0) {
			return // drained
		}
	}
}

func (w *watcher) parse(b []byte) {
	const size = int(unsafe.Sizeof(unix.FanotifyEventMetadata{}))
	for off := 0; off+size <= len(b); {
		m := (*unix.FanotifyEventMetadata)(unsafe.Pointer(&b[off]))
		if m.Event_len < uint32(size) {
			return
		}
		if m.Fd >= 0 {
			if p, err := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", m.Fd)); err == nil {
				w.mu.Lock()
				if !w.seen[p] {
					w.seen[p] = true
					w.paths = append(w.paths, p)
				}
				w.mu.Unlock()
			}
			unix.Close(int(m.Fd))
		}
		off += int(m.Event_len)
	}
}

// stop drains the events and returns the paths in order of first opening.
func (w *watcher) stop() []string {
	select {
	case <-w.done:
	default:
		close(w.done)
	}
	w.wg.Wait()
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]string(nil), w.paths...)
}

func (w *watcher) close() {
	w.stop()
	unix.Close(w.fd)
}

// readyWriter keeps the workload's output and closes ready at the first
// line containing the ready string.
type readyWriter struct {
	mu    sync.Mutex
	buf   bytes.Buffer
	want  string
	ready chan struct{}
	once  sync.Once
}

var _ io.Writer = (*readyWriter)(nil)

func newReadyWriter(want string) *readyWriter {
	return &readyWriter{want: want, ready: make(chan struct{})}
}

func (r *readyWriter) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.buf.Write(p)
	if r.want != "" && strings.Contains(r.buf.String(), r.want) {
		r.once.Do(func() { close(r.ready) })
	}
	return len(p), nil
}

func (r *readyWriter) String() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.buf.String()
}
