// Package p2p makes the node daemons one peer network. It holds the
// contracts shared by its two halves:
//
//   - cluster: Raft-coordinated membership and blob state (who holds which
//     blob, who seeds it from the origin), over mutually authenticated TLS.
//     A few voters run Raft; other nodes are its clients.
//   - swarm: the data plane. The leader names one seeder per blob, so a
//     burst costs the origin one copy; the burst's other nodes stream the
//     blob along a chain, each from the holder that arrived before it, and
//     pull verified pieces from every holder for what the stream does not
//     bring. swarm implements puller.Source, so the node pipeline uses the
//     cluster without knowing about it.
//   - certs: the cluster CA and node certificates (`thaw certs`).
//   - memcoord: an in-memory Coordinator for tests and simulations, and
//     coordtest, the Coordinator conformance suite both implementations run.
//
// Liveness and piece bitmaps are not logged in Raft: heartbeats live in the
// leader's memory, bitmaps travel peer to peer.
package p2p
