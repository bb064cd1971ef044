// Package lazy holds thaw's end-to-end tests of lazy loading: a real
// containerd 1.6 with the stargz snapshotter embedded in `thaw daemon` as a
// proxy snapshotter, runc, FUSE, and a docker-registry (CNCF distribution)
// in a network namespace of its own behind a veth whose registry end is
// shaped with tc tbf, so that what a cold start waits for is a link, not
// loopback.
//
// The test image is built from the Python on the machine (an interpreter,
// its standard library and the shared libraries ldd finds), pushed plain and
// converted with `thaw convert`. The tests assert that the eStargz layers
// were mounted lazily (FUSE mounts, remote snapshot labels, thaw's mount
// counter), that a plain image still runs through the same snapshotter (a
// normal pull through the mirror), and that containerd and the daemon
// survive the snapshotter being killed. They never assert on time.
//
// The benchmark (bench_test.go, THAW_LAZY_BENCH=1) measures the time from
// the pull request to the workload's ready line and the bytes that crossed
// the link before it, for the plain image through thaw, the eStargz image
// through thaw, and the eStargz image through the same snapshotter reading
// the registry directly, and writes RESULTS.md.
//
//	sudo go test -tags e2e -count=1 -v ./integration/lazy/
//	sudo THAW_LAZY_BENCH=1 go test -tags e2e -count=1 -run TestLazyBenchmark -v -timeout 60m ./integration/lazy/
package lazy
