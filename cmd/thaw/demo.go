package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/spf13/cobra"

	"github.com/thaw-dev/thaw/p2p/swarm"
	"github.com/thaw-dev/thaw/puller"
	"github.com/thaw-dev/thaw/puller/api"
	"github.com/thaw-dev/thaw/puller/catalog"
	"github.com/thaw-dev/thaw/puller/mirror"
)

func newDemoCmd(g *globalOptions) *cobra.Command {
	var layerMiB int
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Show thaw end to end on this machine, without the internet",
		Long: `Start a local registry with a generated image, a thaw daemon in a temporary
directory, and pull the image through the mirror as containerd would: first
from the registry, then from the node's store, then with the registry gone.
Nothing is left behind.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runDemo(cmd.Context(), cmd.OutOrStdout(), g, layerMiB)
		},
	}
	cmd.Flags().IntVar(&layerMiB, "layer-mib", 16, "size of each of the image's three layers, MiB")
	return cmd
}

func runDemo(ctx context.Context, out io.Writer, g *globalOptions, layerMiB int) error {
	dir, err := os.MkdirTemp("", "thaw-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	// The demo narrates on stdout; the daemon's log shows only when asked for.
	logOut := io.Discard
	if g.logLevel == "debug" {
		logOut = os.Stderr
	}
	log, err := g.logger(logOut)
	if err != nil {
		return err
	}

	// 1. A registry on loopback with a generated three-layer image.
	regSrv := httptest.NewServer(registry.New(registry.Logger(slog.NewLogLogger(slog.DiscardHandler, 0))))
	regHost := strings.TrimPrefix(regSrv.URL, "http://")
	img, err := random.Image(int64(layerMiB)<<20, 3)
	if err != nil {
		return err
	}
	ref, err := name.ParseReference(regHost + "/demo/app:v1")
	if err != nil {
		return err
	}
	if err := remote.Write(ref, img); err != nil {
		return fmt.Errorf("push demo image: %w", err)
	}
	fmt.Fprintf(out, "registry  %s serves %s (3 layers of %d MiB)\n", regHost, ref.Name(), layerMiB)

	// 2. A daemon on its embedded defaults, but in a temporary directory and on
	// free ports; tags are always re-checked so the outage below is visible.
	resolver := catalog.DefaultResolverConfig()
	resolver.TTL = 0
	nodeCtx, stopNode := context.WithCancel(ctx)
	defer stopNode()
	n, err := newNode(nodeCtx, nodeConfig{
		DataDir: dir, MirrorAddr: "127.0.0.1:0", MetricsAddr: "127.0.0.1:0",
		APIAddr: filepath.Join(dir, "thaw.sock"), DefaultRegistry: regHost,
		Resolver: resolver, Concurrency: 3,
		Peer: peerConfig{NodeID: "demo", Voters: 1, Swarm: swarm.DefaultConfig()},
	}, log)
	if err != nil {
		return err
	}
	done := make(chan error, 1)
	go func() { done <- n.Run(nodeCtx) }()
	defer func() { stopNode(); <-done }()
	mirrorAddr := n.Addr("mirror")
	fmt.Fprintf(out, "thaw      mirror on %s, metrics on http://%s/metrics, data in %s\n\n", mirrorAddr, n.Addr("metrics"), dir)

	client := &http.Client{Timeout: time.Minute}
	pull := func(title string) error {
		fmt.Fprintf(out, "%s\n", title)
		start := time.Now()
		if err := pullThrough(ctx, out, client, mirrorAddr, ref); err != nil {
			return err
		}
		fmt.Fprintf(out, "  whole image in %s\n\n", time.Since(start).Round(time.Millisecond))
		return nil
	}
	if err := pull("pull 1: a cold node, bytes come from the registry and stream to the client as they arrive"); err != nil {
		return err
	}
	if err := pull("pull 2: the same image again, served from the node's verified store"); err != nil {
		return err
	}
	regSrv.Close()
	if err := pull("pull 3: the registry is gone; the tag resolves to its last known digest"); err != nil {
		return err
	}

	// 3. The CLI's view, through the daemon's API.
	c := api.NewClient(filepath.Join(dir, "thaw.sock"))
	st, err := c.Status(ctx)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "thaw status: %d blobs, %s in the store, %d image(s) known\n", st.Blobs, human(st.StoreBytes), st.Images)
	return printDemoMetrics(ctx, out, client, n.Addr("metrics"))
}

// pullThrough pulls ref through the mirror the way containerd does: resolve
// the tag with HEAD, then GET the manifest by digest and every blob.
func pullThrough(ctx context.Context, out io.Writer, c *http.Client, mirrorAddr string, ref name.Reference) error {
	repo := ref.Context()
	base := "http://" + mirrorAddr + "/v2/" + repo.RepositoryStr()
	ns := "?ns=" + repo.RegistryStr()
	get := func(method, url string) (*http.Response, error) {
		req, err := http.NewRequestWithContext(ctx, method, url, nil)
		if err != nil {
			return nil, err
		}
		req.Header.Set("Accept", strings.Join(puller.ManifestMediaTypes, ", "))
		resp, err := c.Do(req)
		if err != nil {
			return nil, err
		}
		if resp.StatusCode != http.StatusOK {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			return nil, fmt.Errorf("%s %s: %s: %s", method, url, resp.Status, b)
		}
		return resp, nil
	}
	resp, err := get(http.MethodHead, base+"/manifests/"+ref.Identifier()+ns)
	if err != nil {
		return err
	}
	resp.Body.Close()
	dgst := resp.Header.Get("Docker-Content-Digest")
	fmt.Fprintf(out, "  tag %-10s -> %s resolved: %s, manifest: %s\n", ref.Identifier(), dgst[:19], resp.Header.Get(mirror.ResolvedHeader), resp.Header.Get(mirror.SourceHeader))

	resp, err = get(http.MethodGet, base+"/manifests/"+dgst+ns)
	if err != nil {
		return err
	}
	m, err := v1.ParseManifest(resp.Body)
	resp.Body.Close()
	if err != nil {
		return fmt.Errorf("manifest: %w", err)
	}
	for _, d := range append([]v1.Descriptor{m.Config}, m.Layers...) {
		start := time.Now()
		resp, err := get(http.MethodGet, base+"/blobs/"+d.Digest.String()+ns)
		if err != nil {
			return err
		}
		n, err := io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if err != nil {
			return fmt.Errorf("blob %s: %w", d.Digest, err)
		}
		if n != d.Size {
			return fmt.Errorf("blob %s: got %d bytes, want %d", d.Digest, n, d.Size)
		}
		fmt.Fprintf(out, "  blob %s %-9s %8s in %s\n", d.Digest.String()[7:19], resp.Header.Get(mirror.SourceHeader), human(n), time.Since(start).Round(time.Microsecond))
	}
	return nil
}

// printDemoMetrics shows the thaw_* counters that tell the story.
func printDemoMetrics(ctx context.Context, out io.Writer, c *http.Client, addr string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/metrics", nil)
	if err != nil {
		return err
	}
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	fmt.Fprintln(out, "\nmetrics (from /metrics):")
	for _, line := range strings.Split(string(b), "\n") {
		for _, prefix := range []string{"thaw_served_bytes_total", "thaw_fetched_bytes_total", "thaw_cache_requests_total", "thaw_stale_tag_resolutions_total", "thaw_store_bytes "} {
			if strings.HasPrefix(line, prefix) {
				fmt.Fprintln(out, "  "+line)
			}
		}
	}
	return nil
}
