// Package p2p will make the node daemons one peer network: Raft coordination
// (hashicorp/raft) of members and blob holders, and swarm transfer of blob
// pieces between nodes, exposed to the puller as a puller.Source. Not built
// yet: see the peer network issue. Until then the fetcher's Source is the
// origin registry (puller/upstream).
package p2p
