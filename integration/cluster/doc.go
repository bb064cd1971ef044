// Package cluster holds thaw's multi-node end-to-end tests: several real
// `thaw daemon` processes, each in a network namespace of its own, forming
// a peer network over shaped links, and a docker-registry (CNCF
// distribution) in another namespace as the origin.
//
// The harness (harness_test.go, netns_test.go) builds, per test, a bridge in
// the root namespace, one namespace per node and one for the registry, a
// veth from each to the bridge, addresses in a 10.x.0.0/16 that no route of
// the machine uses, and a tc token bucket (tbf) at the test's rate on both
// ends of every veth, so that each host's uplink and downlink are each
// limited to that rate. The root namespace gets an address on the bridge to
// push the test image and to scrape metrics; the CLI talks to each daemon
// over its unix socket, which crosses network namespaces. Names start with
// thw<pid>; namespaces, links and processes are removed when a test ends,
// failed or not, and leftovers of runs whose process is gone are removed
// when the package starts.
//
// Fault tests (faults_test.go) kill a seeder, a downloader and the Raft
// leader in the middle of a burst, start a node with a certificate of
// another CA, and partition a node from its peers; they assert on metrics
// and on the blobs each store holds, never on wall time. The burst
// benchmark (bench_test.go) compares the peer network with every node
// pulling straight from the registry and writes RESULTS.md; it runs only
// with THAW_BURST=1.
//
// Lazy loading on the harness (lazy_test.go): every node also runs a
// containerd 1.6 in its namespace (nsenter --net, so runc keeps the root
// mount namespace) whose stargz proxy snapshotter is its daemon's
// (--snapshotter-socket), and all nodes start the same image at the same
// moment. TestClusterLazy asserts that every node ran the workload with
// every eStargz layer mounted lazily, that each fetched the ranges it
// waited for, and that the rest of each blob came through the peer
// network; the benchmark (THAW_CLUSTER_LAZY=1) compares the eStargz cold
// start with the plain image through the peer network and writes
// LAZY_RESULTS.md. They also need containerd, runc, ctr, ldd and /dev/fuse
// (integration/e2e-deps.sh installs them); the image and containerd
// helpers are integration/testenv's, shared with integration/lazy.
//
// The tests need root, iproute2 (ip, tc), nsenter, iptables and
// docker-registry, and the build tag e2e:
//
//	sudo go test -tags e2e -count=1 -v -timeout 30m ./integration/cluster/
//	sudo THAW_BURST=1 go test -tags e2e -count=1 -run TestBurstBenchmark -v -timeout 60m ./integration/cluster/
//	sudo THAW_CLUSTER_LAZY=1 go test -tags e2e -count=1 -run TestClusterLazyBenchmark -v -timeout 60m ./integration/cluster/
//
// THAW_E2E_BIN, if set, is a thaw binary to test instead of building one;
// THAW_E2E_LOGS=1 prints the tail of every daemon's log, not only when a
// test fails. The benchmark reads THAW_BURST_SIZE (S, default 64MiB),
// THAW_BURST_RATE (B, default 50mbit), THAW_BURST_NODES (default
// 1,4,8,16), THAW_BURST_MODES (thaw,direct), THAW_BURST_PIECE and
// THAW_BURST_FLAGS (daemon flags for tuning runs), THAW_BURST_RESULTS (the
// report's path, default RESULTS.md here), THAW_BURST_LOGS (a directory
// to keep the daemons' logs and the progress samples in) and
// THAW_BURST_ACKPRIO=1 (a diagnostic: small packets, the ACKs, go ahead of
// bulk data in every link's queue, as a fair queue would put them; the
// benchmark itself keeps the plain FIFO). The lazy benchmark reads
// THAW_CLUSTER_LAZY_RATE (default 100mbit), THAW_CLUSTER_LAZY_NODES (4),
// THAW_CLUSTER_LAZY_ROUNDS (3), THAW_CLUSTER_LAZY_PYTHON (the prefix of the
// image) and THAW_CLUSTER_LAZY_RESULTS (default LAZY_RESULTS.md here).
//
// The package owns the network plumbing and the processes; it does not
// test thaw's packages one by one (their own tests do, p2p/cluster and
// p2p/swarm in-process).
package cluster
