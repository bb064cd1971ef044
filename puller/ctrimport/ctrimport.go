package ctrimport

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/platforms"
	"github.com/google/go-containerregistry/pkg/name"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/thaw-dev/thaw/puller/prefetch"
)

// Importer imports images into containerd through the node mirror.
type Importer struct {
	mirror string // host:port of the node mirror
	log    *slog.Logger
	client *http.Client
}

// New returns an Importer whose pulls go to the mirror at host:port.
func New(mirror string, log *slog.Logger) *Importer {
	return &Importer{mirror: mirror, log: log, client: &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 8}}}
}

// Import pulls ref into the containerd at address, in namespace, unpacking
// into snapshotter ("" for containerd's default), for the platforms given.
func (i *Importer) Import(ctx context.Context, address, namespace, snapshotter string, ref name.Reference, plat prefetch.Platforms) error {
	c, err := containerd.New(address, containerd.WithTimeout(10*time.Second))
	if err != nil {
		return fmt.Errorf("connect to containerd at %s: %w", address, err)
	}
	defer c.Close()
	ctx = namespaces.WithNamespace(ctx, namespace)

	matcher, err := matcher(plat)
	if err != nil {
		return err
	}
	resolver := docker.NewResolver(docker.ResolverOptions{
		Hosts: func(string) ([]docker.RegistryHost, error) {
			return []docker.RegistryHost{{
				Client:       i.client,
				Host:         i.mirror,
				Scheme:       "http",
				Path:         "/v2",
				Capabilities: docker.HostCapabilityPull | docker.HostCapabilityResolve,
			}}, nil
		},
	})
	opts := []containerd.RemoteOpt{
		containerd.WithResolver(resolver),
		containerd.WithPullUnpack,
		containerd.WithPlatformMatcher(matcher),
	}
	if snapshotter != "" {
		opts = append(opts, containerd.WithPullSnapshotter(snapshotter))
	}
	start := time.Now()
	img, err := c.Pull(ctx, containerdName(ref), opts...)
	if err != nil {
		return fmt.Errorf("containerd pull of %s through the mirror: %w", containerdName(ref), err)
	}
	i.log.Info("imported into containerd", "image", img.Name(), "namespace", namespace, "seconds", time.Since(start).Seconds())
	return nil
}

// containerdName is the name containerd and the CRI use for ref: Docker Hub
// as docker.io, not index.docker.io.
func containerdName(ref name.Reference) string {
	reg := ref.Context().RegistryStr()
	if reg == name.DefaultRegistry {
		reg = "docker.io"
	}
	sep := ":"
	if _, ok := ref.(name.Digest); ok {
		sep = "@"
	}
	return reg + "/" + ref.Context().RepositoryStr() + sep + ref.Identifier()
}

func matcher(plat prefetch.Platforms) (platforms.MatchComparer, error) {
	if plat.All {
		return platforms.All, nil
	}
	if len(plat.Only) == 0 {
		return platforms.Default(), nil
	}
	ps := make([]ocispec.Platform, 0, len(plat.Only))
	for _, s := range plat.Only {
		p, err := platforms.Parse(s)
		if err != nil {
			return nil, fmt.Errorf("platform %q: %w", s, err)
		}
		ps = append(ps, p)
	}
	return platforms.Ordered(ps...), nil
}
