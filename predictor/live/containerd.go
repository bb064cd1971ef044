package live

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	eventtypes "github.com/containerd/containerd/api/events"
	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/typeurl/v2"
)

// FunctionLabel is the container label that names a container's function
// (the app the predictor plans for). A container without it is named by
// its image. Kubernetes' CRI copies pod labels to the sandbox only, so a
// platform sets this label on the container (or posts its counts to
// /api/v1/events instead).
const FunctionLabel = "thaw.dev/function"

// criKindLabel marks CRI's containers; sandboxes (pause containers) are
// not functions.
const criKindLabel = "io.cri-containerd.kind"

// StartFunc takes one container start (Service.Started).
type StartFunc func(function, image string, at time.Time) error

// WatchContainerd follows the task start events of the containerd at
// address, in every namespace, and calls start for each container that
// starts, until ctx ends. It reconnects after errors, waiting up to 30 s
// between attempts, so a containerd restart costs only the starts it
// missed meanwhile. It returns nil when ctx ends.
func WatchContainerd(ctx context.Context, address string, start StartFunc, log *slog.Logger) error {
	wait := time.Second
	for {
		connected, err := watchOnce(ctx, address, start, log)
		if ctx.Err() != nil {
			return nil
		}
		if connected {
			wait = time.Second
		}
		log.Warn("containerd event stream ended; reconnecting", "address", address, "in", wait, "err", err)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		}
		wait = min(2*wait, 30*time.Second)
	}
}

func watchOnce(ctx context.Context, address string, start StartFunc, log *slog.Logger) (connected bool, err error) {
	c, err := containerd.New(address, containerd.WithTimeout(10*time.Second))
	if err != nil {
		return false, fmt.Errorf("connect to containerd at %s: %w", address, err)
	}
	defer c.Close()
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	envs, errs := c.EventService().Subscribe(sctx, `topic=="/tasks/start"`)
	log.Info("following containerd's container starts", "address", address)
	for {
		select {
		case <-ctx.Done():
			return true, nil
		case err := <-errs:
			if err == nil {
				err = errors.New("event stream closed")
			}
			return true, err
		case env := <-envs:
			ev, err := typeurl.UnmarshalAny(env.Event)
			if err != nil {
				log.Warn("undecodable containerd event", "topic", env.Topic, "err", err)
				continue
			}
			ts, ok := ev.(*eventtypes.TaskStart)
			if !ok {
				continue
			}
			nctx, ncancel := context.WithTimeout(namespaces.WithNamespace(ctx, env.Namespace), 5*time.Second)
			ctr, err := c.ContainerService().Get(nctx, ts.ContainerID)
			ncancel()
			if err != nil {
				log.Debug("a started container is gone already", "namespace", env.Namespace, "container", ts.ContainerID, "err", err)
				continue
			}
			if ctr.Labels[criKindLabel] == "sandbox" || ctr.Image == "" {
				continue
			}
			function := ctr.Labels[FunctionLabel]
			if function == "" {
				function = ctr.Image
			}
			at := env.Timestamp
			if at.IsZero() {
				at = time.Now()
			}
			if err := start(function, ctr.Image, at); err != nil {
				log.Warn("container start not counted", "container", ts.ContainerID, "function", function, "err", err)
			}
		}
	}
}
