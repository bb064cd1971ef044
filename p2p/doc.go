// Package p2p makes the node daemons one peer network. It holds the
// contracts shared by its two halves:
//
//   - cluster: Raft-coordinated membership and blob state (who holds which
//     blob, who seeds it from the origin), over mutually authenticated TLS.
//     A few voters run Raft; other nodes are its clients.
//   - swarm: the data plane. Blobs move between nodes in verified pieces,
//     from every holder at once, including holders still downloading; the
//     leader names one seeder per blob, so a burst costs the origin one copy.
//     swarm implements puller.Source, so the node pipeline uses the cluster
//     without knowing about it.
//   - certs: the cluster CA and node certificates (`thaw certs`).
//
// Liveness and piece bitmaps are not logged in Raft: heartbeats live in the
// leader's memory, bitmaps travel peer to peer.
package p2p
