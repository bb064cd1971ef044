// Package coordtest is the conformance suite of p2p.Coordinator: the
// contract every implementation (the Raft cluster of p2p/cluster, the
// in-memory p2p/memcoord) must keep, run against each from its own tests.
package coordtest
