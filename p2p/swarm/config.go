package swarm

import (
	"fmt"
	"time"
)

// Config tunes the data plane.
type Config struct {
	// PieceSize is the unit of transfer and verification.
	PieceSize int64
	// Stream: a download streams the blob in order from the holder that
	// arrived just before it (a chain through a burst's nodes) and pulls
	// only what the stream does not bring; off, it pulls every piece.
	Stream bool
	// StreamLead is how far ahead of the stream, in pieces, pulls may take
	// pieces other holders have: a stream that falls that far behind (a
	// slow or rate-limited node ahead of this one in the chain) no longer
	// holds the download back.
	StreamLead int
	// Parallel is how many pieces of one blob are fetched at once.
	Parallel int
	// Window is how many pieces past the reader's position may be fetched
	// (and held in memory until the reader takes them).
	Window int
	// MaxUploads caps the piece uploads this node serves at once; requests
	// over it get 503 and go to another holder.
	MaxUploads int
	// UploadRate and DownloadRate limit peer traffic in bytes per second
	// (0: unlimited).
	UploadRate, DownloadRate int64
	// SeedCopies is how many peers the seeder of a blob in flight sends each
	// piece to before it tells the others to take it from those peers; it
	// keeps the seeder's uplink for pieces nobody else has.
	SeedCopies int
	// PieceUploads caps the uploads of one piece a node serves at once, so a
	// piece spreads as a tree (each receiver serving the next ones, while the
	// piece still arrives) rather than every node waiting on its first
	// holder's uplink together.
	PieceUploads int
	// StallTimeout abandons a piece request that delivered no byte for this long.
	StallTimeout time.Duration
	// FallbackAfter reads the rest of a blob from the origin when no piece
	// arrived for this long.
	FallbackAfter time.Duration
	// CoordTimeout bounds each call to the coordinator.
	CoordTimeout time.Duration
	// AvoidFor is how long a peer that served wrong bytes is not asked again.
	AvoidFor time.Duration
	// PollInterval is how often the list of holders is refreshed during a
	// download; BitmapWait is how long a holder holds a bitmap request open
	// waiting for news.
	PollInterval, BitmapWait time.Duration
}

// DefaultConfig: 4 MiB pieces, streamed along the burst's chain (pulls
// take a piece more than 4 pieces ahead of a lagging stream), 4 pulls in
// flight within an 8-piece (32 MiB) window, 16 uploads at once, no rate
// limits, fall back to the origin after 20 s without progress (longer than
// the cluster takes to expire a dead seeder, so that one node takes its
// role over rather than every node going to the origin).
func DefaultConfig() Config {
	return Config{
		PieceSize:     4 << 20,
		Stream:        true,
		StreamLead:    4,
		Parallel:      4,
		Window:        8,
		MaxUploads:    16,
		SeedCopies:    1,
		PieceUploads:  2,
		StallTimeout:  5 * time.Second,
		FallbackAfter: 20 * time.Second,
		CoordTimeout:  2 * time.Second,
		AvoidFor:      10 * time.Minute,
		PollInterval:  time.Second,
		BitmapWait:    2 * time.Second,
	}
}

// Validate reports a configuration that cannot work.
func (c Config) Validate() error {
	switch {
	case c.PieceSize < 64<<10:
		return fmt.Errorf("swarm: piece size %d: must be at least 64 KiB", c.PieceSize)
	case c.Parallel < 1 || c.Window < c.Parallel:
		return fmt.Errorf("swarm: parallel %d and window %d: need 1 <= parallel <= window", c.Parallel, c.Window)
	case c.Stream && (c.StreamLead < 1 || c.StreamLead >= c.Window):
		return fmt.Errorf("swarm: stream lead %d: need 1 <= lead < window %d", c.StreamLead, c.Window)
	case c.MaxUploads < 1 || c.SeedCopies < 1 || c.PieceUploads < 1:
		return fmt.Errorf("swarm: max uploads %d, seed copies %d and piece uploads %d must be >= 1", c.MaxUploads, c.SeedCopies, c.PieceUploads)
	case c.UploadRate < 0 || c.DownloadRate < 0:
		return fmt.Errorf("swarm: rates must be >= 0")
	case c.StallTimeout <= 0 || c.FallbackAfter <= 0 || c.CoordTimeout <= 0 || c.PollInterval <= 0 || c.BitmapWait <= 0:
		return fmt.Errorf("swarm: timeouts and intervals must be > 0")
	}
	return nil
}
