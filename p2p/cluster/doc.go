// Package cluster coordinates the node daemons with Raft
// (hashicorp/raft): membership, which nodes hold which blob, and which node
// seeds a blob from the origin. Node implements p2p.Coordinator.
//
// It owns the replicated state machine, the Raft transport (mutual TLS with
// the cluster CA, see p2p/certs), the coordination API under
// /p2p/v1/cluster/ (Node.Handler; the caller runs the peer HTTPS server),
// joining, heartbeats and expiry. It does not move blob bytes (p2p/swarm)
// nor know what a node stores: the node's Config.Inventory says.
//
// # Roles
//
// A few voters (Config.Voters, default 3) run Raft; every other node is a
// client of the voters and runs no Raft, so the log is replicated to a
// handful of machines whatever the cluster's size. A node with no Join
// address and no Raft state bootstraps a one-voter cluster; without TLS it
// runs standalone, with Raft on no network (a single `thaw daemon`). Every
// other node joins: it posts to a Join address, any node forwards the join
// to the leader, and the leader adds it as a voter while the Raft
// configuration has fewer than Voters voters, else records it as a client.
// Each node listens for Raft while it joins, since only the answer tells it
// its role. A restarted node with Raft state rejoins and never bootstraps
// again. Voters stay in the Raft configuration when they stop: a voter
// down for good must be removed by an operator (not implemented yet).
//
// Nodes that all join one name and none of which may bootstrap (the pods
// of a Kubernetes DaemonSet behind a headless Service) set
// Config.BootstrapExpect: every node answers a hello on the peer API, and
// once that many answer with none in a cluster, the smallest node ID
// bootstraps and the others join it.
//
// # Requests
//
// Writes (claimSeeder, announce, drop, join, leave, heartbeat) are served
// by the leader; reads of blob state by any voter that follows a leader, so
// they may be slightly stale. A node that cannot serve a request forwards
// it: a voter to the leader, whose peer address is in the replicated member
// list; a client to the voters it learnt from its last join or heartbeat
// answer, the leader first. Every request is bounded by
// Config.RequestTimeout, forwarding included, and fails with an error
// wrapping p2p.ErrNoLeader when no leader answered in time, so that the data
// plane falls back to the origin.
//
// # State
//
// The replicated state (JSON commands in the log, JSON snapshots) holds the
// members (ID, peer and Raft addresses, role) and, per blob digest, its
// size, its seeder and its holders with a complete flag. A blob nobody
// holds or seeds is deleted, so the state stays bounded by what the cluster
// stores. ClaimSeeder names the first claimant while a blob has no seeder
// and no complete holder; a seeder that drops the blob, leaves or expires
// is cleared, so the next claimant replaces it; a complete copy clears the
// seeder, as nobody needs the origin any more.
//
// # Liveness
//
// Liveness is not logged. Every node heartbeats to the leader each
// HeartbeatInterval; the leader keeps last-seen times in memory, starts
// them afresh when it gains leadership, and commits expire(node) for nodes
// silent for ExpireAfter: their holdings and seeder roles go, clients are
// removed, voters stay members marked gone. A node whose heartbeat answer
// says it is unknown joins again with its inventory.
package cluster
