// Package sim replays a per-minute invocation trace in simulated time
// through thaw's predictor (predictor.Engine with the same models and
// planner the daemon runs) and through baselines, on a model of a cluster,
// and measures image misses, pull time on the critical path, prefetched
// bytes never used, and bytes from the origin. `thaw replay` is its command
// line.
//
// # The cluster model
//
// Every number is a Config field (and a `thaw replay` flag).
//
//   - Nodes: Config.Nodes nodes, each with Config.DiskBudget bytes of image
//     disk, a link of Config.Bandwidth bytes per second, Config.Slots
//     instance slots, and at most Config.PerNode instances of one app.
//   - Images: each app (HashApp) is one image of three layers: the base
//     layer of one of Config.Runtimes runtimes, shared by every app of that
//     runtime (runtime r chosen with probability ∝ 1/(r+1)); a dependency
//     layer; a code layer. Sizes are log-normal with medians
//     Config.BaseLayer (σ 0.5), Config.DepsLayer and Config.CodeLayer (σ
//     1.0), clipped to [64 KiB, 4 GiB], drawn from a PCG generator seeded
//     with Config.Seed and a hash of the app's ID, so an app has the same
//     image in any slice of a trace. Config.IdleApps never-invoked apps can
//     be added to the catalog.
//   - Instances: an app needs ceil(Σ invocations × mean duration / 60 s)
//     instances in a minute (Little's law; durations per function from the
//     durations file, else Config.DefaultDuration), at least one when
//     invoked. Running instances serve it; the shortfall starts, spread
//     evenly over the minute. An instance idle for Config.ScaleDown stops;
//     its image stays on disk.
//   - Placement: a new instance goes to a node with a free slot and fewer
//     than PerNode instances of its app that holds its whole image
//     (complete), as Kubernetes' ImageLocality prefers; then the node with
//     most of the image's bytes, then fewest instances of the app, then
//     fewest busy slots; ties by a hash of app and node.
//   - Pulls: a start that finds a layer absent or still arriving is a miss
//     and waits for the rest at the link's bandwidth (pull seconds: bytes
//     still to come / bandwidth). A layer comes from a peer when any node
//     holds it, from the origin otherwise (the peer network's promise).
//     Prefetches queue on the node's link one after another; a start does
//     not wait behind them.
//   - Disk: layers no instance uses are evicted least recently used first,
//     unpinned before pinned (pins yield only to a start that would not
//     fit otherwise); a start also cancels unpinned prefetches still
//     arriving. Jobs pin their layers until they expire; content of
//     background jobs (Job.Background) is fetched only into free disk and
//     is the first evicted until a start uses it.
//   - Accounting: starts, misses, pull seconds and hits count after
//     Config.Warmup; bytes count over the whole replay, warm-up included.
//     Prefetched bytes never used are those no start on the node used
//     before they were evicted or the replay ended.
//
// The planner runs at the start of every minute on the minute before, as
// the leader will on aggregated events.
//
// # Policies
//
// See Policies: lru (kubelet's image GC), prepull-all, a fixed keep-alive,
// the hybrid histogram alone, and thaw. All share the cluster and the disk
// budget.
package sim
