package main

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"

	"github.com/thaw-dev/thaw/predictor/sim"
	"github.com/thaw-dev/thaw/predictor/trace"
)

func newReplayCmd(_ *globalOptions) *cobra.Command {
	cfg := sim.DefaultConfig()
	var (
		traceFile, durationsFile, metricsFile string
		policies                              []string
		disk                                  = byteSize(cfg.DiskBudget)
		bandwidth                             = byteSize(cfg.Bandwidth)
		baseLayer                             = byteSize(cfg.BaseLayer)
		depsLayer                             = byteSize(cfg.DepsLayer)
		codeLayer                             = byteSize(cfg.CodeLayer)
	)
	cmd := &cobra.Command{
		Use:   "replay --trace FILE [--durations FILE]",
		Short: "Replay an invocation trace through thaw's predictor and baselines, in simulated time",
		Long: `Replay a per-minute invocation trace in simulated time through the same
models and planner the daemon runs, and through baselines, on a simulated
cluster; print a table of what each policy cost. Nothing touches the network
or this node's store.

The trace is in the Azure Functions 2019 schema (HashOwner, HashApp,
HashFunction, Trigger, then one column per minute named by number or
minute_N): any day of that dataset, or an excerpt. --durations gives the
functions' execution times (function_durations_percentiles schema).

The cluster model (every number is a flag):
  - --nodes nodes, each with --disk of image disk, a link of --bandwidth bytes
    per second, --slots instance slots, at most --per-node instances of one app.
  - Each app (HashApp) is one image of three layers: the base layer of one of
    --runtimes runtimes, shared by all its apps (runtime r with probability
    proportional to 1/(r+1)), a dependency layer and a code layer. Sizes are
    log-normal with medians --base-layer (sigma 0.5), --deps-layer and
    --code-layer (sigma 1.0), clipped to [64 KiB, 4 GiB], drawn with --seed
    from each app's own hash. --idle-apps adds deployed apps never invoked.
  - An app needs ceil(invocations x mean duration / 60 s) instances in a
    minute (durations from --durations, else --default-duration); the
    shortfall starts, spread over the minute. An instance idle for
    --scale-down stops; its image stays on disk until evicted.
  - A new instance goes to a node with a free slot holding its whole image, as
    Kubernetes' ImageLocality prefers; then most of the image's bytes, fewest
    instances of the app, least busy.
  - A start that finds a layer absent or still arriving is a miss and pulls
    the rest at the link's bandwidth (pull seconds). A layer comes from a peer
    when some node holds it, else from the origin (origin bytes).
  - Disks evict least recently used layers not in use, unpinned first.
    Prefetch jobs pin layers until their prediction expires; background jobs
    fetch only into free disk and are evicted first until used.
  - Starts, misses and pull seconds count after --warmup; bytes count over
    the whole replay.

Policies, all on the same cluster and disk budget:
  lru               no prefetch; LRU eviction, as kubelet's image GC
  prepull-all       every image to every node at the start, evicting LRU what
                    does not fit; then as lru
  keepalive-<d>     images pinned where they ran for --keepalive after the
                    last invocation (a fixed keep-alive)
  hybrid-histogram  the hybrid histogram policy of Shahrad et al. (ATC'20),
                    paper settings, through thaw's planner
  thaw              periodic, histogram and burst models through thaw's
                    planner, which also keeps one copy of every catalog image
                    in free disk somewhere in the cluster (--cover)

The default disk, 4 GB a node, is a twelfth of the shared 8-hour trace's
50 GB of images, and about twice what a node's running instances use: images
do not fit everywhere, and what stays cached matters.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if traceFile == "" {
				return fmt.Errorf("--trace is required: an invocations file in the Azure Functions 2019 schema")
			}
			cfg.DiskBudget, cfg.Bandwidth = int64(disk), float64(bandwidth)
			cfg.BaseLayer, cfg.DepsLayer, cfg.CodeLayer = int64(baseLayer), int64(depsLayer), int64(codeLayer)
			cfg.Planner.InstancesPerNode = cfg.PerNode
			if err := cfg.Validate(); err != nil {
				return err
			}
			all := sim.Policies(cfg)
			chosen := all
			if len(policies) > 0 {
				chosen = nil
				var names []string
				for _, p := range all {
					names = append(names, p.Name)
				}
				for _, name := range policies {
					i := slices.Index(names, name)
					if i < 0 {
						return fmt.Errorf("--policies: unknown policy %q; want some of %s", name, strings.Join(names, ", "))
					}
					chosen = append(chosen, all[i])
				}
			}
			return runReplay(cmd, cfg, traceFile, durationsFile, metricsFile, chosen)
		},
	}
	f := cmd.Flags()
	f.StringVar(&traceFile, "trace", "", "invocations file (Azure Functions 2019 schema)")
	f.StringVar(&durationsFile, "durations", "", "function durations file; without it every invocation takes --default-duration")
	f.StringVar(&metricsFile, "metrics", "", "write every policy's predictor metrics to this file, in Prometheus text format")
	f.StringSliceVar(&policies, "policies", nil, "policies to replay (default all)")
	f.IntVar(&cfg.Nodes, "nodes", cfg.Nodes, "nodes in the cluster")
	f.Var(&disk, "disk", "image disk budget of each node")
	f.Var(&bandwidth, "bandwidth", "each node's link, bytes per second (125MB is 1 Gbit/s)")
	f.IntVar(&cfg.Slots, "slots", cfg.Slots, "instances a node runs at once")
	f.IntVar(&cfg.PerNode, "per-node", cfg.PerNode, "instances of one app a node runs at most")
	f.IntVar(&cfg.Runtimes, "runtimes", cfg.Runtimes, "runtimes, each a base layer its apps share")
	f.Var(&baseLayer, "base-layer", "median size of a runtime's base layer")
	f.Var(&depsLayer, "deps-layer", "median size of an app's dependency layer")
	f.Var(&codeLayer, "code-layer", "median size of an app's code layer")
	f.Uint64Var(&cfg.Seed, "seed", cfg.Seed, "seed of the image sizes and runtimes")
	f.IntVar(&cfg.IdleApps, "idle-apps", cfg.IdleApps, "deployed apps the trace never invokes, added to the catalog")
	f.DurationVar(&cfg.ScaleDown, "scale-down", cfg.ScaleDown, "an instance idle this long stops")
	f.DurationVar(&cfg.DefaultDuration, "default-duration", cfg.DefaultDuration, "duration of an invocation of a function without a known duration")
	f.DurationVar(&cfg.Warmup, "warmup", cfg.Warmup, "replayed first but not counted")
	f.DurationVar(&cfg.KeepAlive, "keepalive", cfg.KeepAlive, "window of the fixed keep-alive baseline")
	f.Float64Var(&cfg.Planner.PinFraction, "pin-fraction", cfg.Planner.PinFraction, "share of a node's disk, less what is in use and a reserve, that pins may take")
	f.DurationVar(&cfg.Planner.Lead, "lead", cfg.Planner.Lead, "act on predictions whose window opens within this")
	f.BoolVar(&cfg.Planner.Cover, "cover", cfg.Planner.Cover, "let thaw keep one copy of every catalog image in free disk")
	f.DurationVar(&cfg.Engine.Horizon, "horizon", cfg.Engine.Horizon, "how far ahead the models look")
	return cmd
}

func runReplay(cmd *cobra.Command, cfg sim.Config, traceFile, durationsFile, metricsFile string, policies []sim.Policy) error {
	out := cmd.OutOrStdout()
	began := time.Now()
	inv, err := trace.LoadInvocations(traceFile)
	if err != nil {
		return err
	}
	var durations *trace.Durations
	if durationsFile != "" {
		if durations, err = trace.LoadDurations(durationsFile); err != nil {
			return err
		}
	}
	w, err := sim.NewWorkload(inv, durations, cfg)
	if err != nil {
		return fmt.Errorf("%s: %w", traceFile, err)
	}
	fmt.Fprintf(out, "trace    %d functions (%d with a duration), %d apps (+%d idle), minutes %d-%d; the first %s not counted\n",
		w.Functions, w.WithDuration, len(w.Apps), len(w.Idle), w.FirstMinute, w.FirstMinute+w.Minutes-1, cfg.Warmup)
	fmt.Fprintf(out, "cluster  %d nodes x %.1f GB disk, %.0f MB/s links, %d slots (%d per app); images %.1f GB (%d layers, %d runtimes)\n",
		cfg.Nodes, float64(cfg.DiskBudget)/sim.GB, cfg.Bandwidth/sim.MB, cfg.Slots, cfg.PerNode,
		float64(w.CatalogBytes())/sim.GB, w.Layers(), cfg.Runtimes)
	var reg *prometheus.Registry
	var rr prometheus.Registerer
	if metricsFile != "" {
		reg = prometheus.NewRegistry()
		rr = reg
	}
	results, err := sim.Run(cmd.Context(), cfg, w, policies, rr)
	if err != nil {
		return err
	}
	fmt.Fprintln(out)
	if err := sim.WriteTable(out, results); err != nil {
		return err
	}
	fmt.Fprintln(out)
	thaw, okT := sim.Find(results, "thaw")
	lru, okL := sim.Find(results, "lru")
	pre, okP := sim.Find(results, "prepull-all")
	if okT && okL && lru.Misses > 0 {
		fmt.Fprintf(out, "thaw miss fraction / lru's:              %.3f (target <= 0.5)\n", thaw.MissFraction()/lru.MissFraction())
	}
	if okT && okP && pre.UnusedBytes > 0 {
		fmt.Fprintf(out, "thaw unused bytes / prepull-all's:       %.4f (target <= 0.25)\n", float64(thaw.UnusedBytes)/float64(pre.UnusedBytes))
	}
	for _, r := range results {
		if r.OverBudget > 0 || r.Unplaced > 0 {
			fmt.Fprintf(out, "%s: %d pulls found the disk full of content in use, %d starts found every slot taken\n", r.Policy, r.OverBudget, r.Unplaced)
		}
	}
	fmt.Fprintf(out, "replayed in %s\n", time.Since(began).Round(10*time.Millisecond))
	if reg != nil {
		if err := prometheus.WriteToTextfile(metricsFile, reg); err != nil {
			return fmt.Errorf("--metrics: %w", err)
		}
	}
	return nil
}
