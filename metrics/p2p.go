package metrics

import "github.com/prometheus/client_golang/prometheus"

// P2P holds the metrics of the peer-to-peer data plane. Bytes brought onto
// the node are counted in Puller.FetchedBytes with source peer or upstream.
type P2P struct {
	// UploadBytes: bytes uploaded to each peer.
	UploadBytes *prometheus.CounterVec
	// PieceDuration: time to fetch one piece from a peer, by result (ok,
	// bad (wrong bytes), stalled, error).
	PieceDuration *prometheus.HistogramVec
	// OriginFetches: blob streams opened to the origin, by why: seeder (named
	// by the leader), fallback (peers failed or the leader was unreachable).
	OriginFetches *prometheus.CounterVec
	// Blobs: blobs brought in through the peer network, by role (seeder, swarm).
	Blobs *prometheus.CounterVec
	// BadPeers: peers put on the avoid list for serving wrong bytes.
	BadPeers prometheus.Counter
	// UploadsRefused: piece requests refused because MaxUploads were running.
	UploadsRefused prometheus.Counter
	// Streams: blob streams this node read from a peer (the chain of a
	// burst), by how they ended: done (the blob's end, or the download
	// ended), broke (the peer failed or stalled), bad (a piece failed its
	// digest), lagged (other holders were ahead), gaveup (the download went
	// to the origin).
	Streams *prometheus.CounterVec
}

// NewP2P creates and registers the data plane metrics on reg.
func NewP2P(reg prometheus.Registerer) *P2P {
	m := &P2P{
		UploadBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "thaw_p2p_upload_bytes_total",
			Help: "Bytes uploaded to each peer.",
		}, []string{"peer"}),
		PieceDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "thaw_p2p_piece_duration_seconds",
			Help:    "Time to fetch one piece from a peer, by result.",
			Buckets: latencyBuckets,
		}, []string{"result"}),
		OriginFetches: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "thaw_p2p_origin_fetches_total",
			Help: "Blob streams opened to the origin registry, by reason (seeder, fallback).",
		}, []string{"reason"}),
		Blobs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "thaw_p2p_blobs_total",
			Help: "Blob fetches through the peer network, by this node's role (seeder, swarm).",
		}, []string{"role"}),
		BadPeers: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "thaw_p2p_bad_peers_total",
			Help: "Peers avoided after serving bytes that did not match the piece digest.",
		}),
		UploadsRefused: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "thaw_p2p_uploads_refused_total",
			Help: "Piece requests refused because the node was at its upload cap.",
		}),
	}
	m.Streams = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "thaw_p2p_streams_total",
		Help: "Blob streams read from a peer, by how they ended (done, broke, bad, lagged, gaveup).",
	}, []string{"end"})
	reg.MustRegister(m.UploadBytes, m.PieceDuration, m.OriginFetches, m.Blobs, m.BadPeers, m.UploadsRefused, m.Streams)
	return m
}
