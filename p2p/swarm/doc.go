// Package swarm is the peer-to-peer data plane: it moves blobs between nodes
// in pieces and implements puller.Source, so the node's fetcher pulls through
// the cluster without knowing it.
//
// For each blob a node needs, it asks the coordinator (the Raft leader) to
// name a seeder. The seeder alone streams the blob from the origin, hashing
// each piece as it passes. Every other node streams the blob, in order and
// in one response, from the holder that arrived just before it (the
// coordinator orders holders by arrival), so a burst's nodes form a chain:
// each uplink carries one copy at the pace the seeder reads the origin, and
// every node passes bytes on as they come. Whatever the stream does not
// bring (it broke, stalled, lagged or carried a bad piece) the node pulls:
// pieces fetched in parallel from every holder, including holders still
// downloading, the piece the local reader waits for first, then the
// rarest. Every piece, streamed or pulled, is verified against the digest
// the seeder (or a complete holder) published, and the bytes go to the
// fetcher in order. A peer that serves wrong bytes is avoided; a
// peer that stalls loses its pieces to others; when no peer makes progress
// for FallbackAfter, or the leader cannot be reached, the node reads the rest
// from the origin. Whole blobs are still verified by the store on commit.
//
// Pieces are passed on while they arrive (cut-through): a node offers a
// piece it is receiving as soon as its source answered, and streams its
// bytes to the peers that ask as they come, all but the last byte, which
// goes only once the piece is verified here. A piece that fails here cuts
// those streams short, so its askers see a broken transfer and blame nobody;
// only the node that sent wrong bytes of its own fails a digest check and is
// avoided. The seeder sends each piece to SeedCopies peers and then stops
// offering it, so the others take it from those. In the endgame, when every
// missing piece is being fetched, a piece still arriving through a chain of
// forwarders is asked again of a holder that has it whole; the first copy
// wins.
//
// A download hears of holders from the coordinator (every PollInterval,
// five times as often while no holder it knows offers a piece it lacks) and
// of their pieces from their bitmaps, long-polled at most every 50 ms per
// holder. A fetch whose last fifth is all that is left frees its slot, so
// the next request crosses the links' queues while those bytes arrive.
//
// The package does not store blobs (the content store does) and does not keep
// cluster state (p2p/cluster does).
package swarm
