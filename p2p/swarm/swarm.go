package swarm

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"log/slog"
	"net/http"
	"sync"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"

	"github.com/thaw-dev/thaw/metrics"
	"github.com/thaw-dev/thaw/p2p"
	"github.com/thaw-dev/thaw/puller"
	"github.com/thaw-dev/thaw/puller/store"
)

// Swarm is the data plane of one node: a puller.Source for the fetcher and
// the piece server for its peers.
type Swarm struct {
	cfg     Config
	coord   p2p.Coordinator
	origin  puller.Source
	store   store.Provider
	client  *http.Client
	log     *slog.Logger
	metrics *metrics.P2P
	fetched *prometheus.CounterVec // puller's thaw_fetched_bytes_total

	upLimit, downLimit *rate.Limiter
	uploads            chan struct{}

	mu    sync.Mutex
	blobs map[v1.Hash]*local // blobs being brought in on this node
	// registered is closed and replaced whenever a blob is registered.
	registered chan struct{}
	done       *doneCache // piece digests of complete blobs served lately
	avoid      map[p2p.NodeID]avoidance
}

var _ puller.Source = (*Swarm)(nil)

// New returns the data plane. client must present this node's cluster
// certificate and verify peers' (mutual TLS); origin is the registry client
// used by the seeder and as the fallback.
func New(cfg Config, coord p2p.Coordinator, origin puller.Source, st store.Provider, client *http.Client,
	m *metrics.P2P, fetched *prometheus.CounterVec, log *slog.Logger) (*Swarm, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &Swarm{
		cfg: cfg, coord: coord, origin: origin, store: st, client: client, log: log, metrics: m, fetched: fetched,
		upLimit: newLimiter(cfg.UploadRate), downLimit: newLimiter(cfg.DownloadRate),
		uploads: make(chan struct{}, cfg.MaxUploads),
		blobs:   map[v1.Hash]*local{}, done: newDoneCache(64), avoid: map[p2p.NodeID]avoidance{},
		registered: make(chan struct{}),
	}, nil
}

// Close releases the peer connections kept for reuse. Fetches still running
// fail.
func (s *Swarm) Close() error {
	s.client.CloseIdleConnections()
	return nil
}

// FetchBlob implements puller.Source: the blob's bytes from offset on, from
// the origin if the leader names this node the seeder (or cannot be reached),
// else from the peers that hold it.
func (s *Swarm) FetchBlob(ctx context.Context, repo name.Repository, dgst v1.Hash, offset int64) (io.ReadCloser, int64, error) {
	cctx, cancel := context.WithTimeout(ctx, s.cfg.CoordTimeout)
	st, err := s.coord.ClaimSeeder(cctx, dgst, 0)
	cancel()
	self := s.coord.Self().ID
	if err != nil {
		s.log.Warn("cluster unreachable, fetching from the origin", "digest", dgst.String(), "err", err)
		return s.fromOrigin(ctx, repo, dgst, offset, "fallback")
	}
	var peers []p2p.Holder
	for _, h := range st.Holders {
		if h.Node != self {
			peers = append(peers, h)
		}
	}
	if st.Seeder == self || len(peers) == 0 {
		return s.seed(ctx, repo, dgst, offset)
	}
	return s.download(ctx, repo, dgst, offset, st, peers)
}

// OnCommit tells the cluster this node holds dgst complete. The fetcher calls
// it after the store verified and committed the blob.
func (s *Swarm) OnCommit(dgst v1.Hash, size int64) {
	s.mu.Lock()
	l := s.blobs[dgst]
	if l != nil {
		delete(s.blobs, dgst)
		if l.committed() {
			s.done.Add(dgst, l)
		}
	}
	s.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.CoordTimeout)
	defer cancel()
	if l != nil {
		// The announcement that this node holds the blob in progress must
		// not land after this one: it would turn the complete copy back
		// into a partial one, and with no seeder left the others would
		// take the blob from the origin again.
		select {
		case <-l.announced:
		case <-ctx.Done():
		}
	}
	if err := s.coord.Announce(ctx, dgst, size, true); err != nil {
		s.log.Warn("announcing a complete blob", "digest", dgst.String(), "err", err)
	}
}

// fromOrigin streams the blob from the origin without seeding it.
func (s *Swarm) fromOrigin(ctx context.Context, repo name.Repository, dgst v1.Hash, offset int64, reason string) (io.ReadCloser, int64, error) {
	body, size, err := s.origin.FetchBlob(ctx, repo, dgst, offset)
	if err != nil {
		return nil, 0, err
	}
	s.metrics.OriginFetches.WithLabelValues(reason).Inc()
	return &countingReader{r: body, c: s.fetched.WithLabelValues(metrics.SourceUpstream)}, size, nil
}

// seed streams the blob from the origin as the cluster's seeder: every piece
// is hashed as it passes and offered to peers as soon as the store has it.
func (s *Swarm) seed(ctx context.Context, repo name.Repository, dgst v1.Hash, offset int64) (io.ReadCloser, int64, error) {
	body, size, err := s.origin.FetchBlob(ctx, repo, dgst, offset)
	if err != nil {
		return nil, 0, err
	}
	s.metrics.OriginFetches.WithLabelValues("seeder").Inc()
	s.metrics.Blobs.WithLabelValues("seeder").Inc()
	l := newLocal(size, s.cfg.PieceSize, true, true)
	r := &seedReader{s: s, dgst: dgst, body: body, l: l, c: s.fetched.WithLabelValues(metrics.SourceUpstream), h: sha256.New()}
	// A resumed stream starts inside the blob: hash what the store holds
	// before offset, so every piece still gets its digest.
	start := offset - offset%s.cfg.PieceSize
	if offset > 0 {
		if err := s.hashPrefix(ctx, dgst, l, start, offset, r); err != nil {
			body.Close()
			return nil, 0, err
		}
	}
	r.piece, r.off = int(start/s.cfg.PieceSize), offset
	s.register(dgst, l)
	s.announce(dgst, size, l)
	return r, size, nil
}

// hashPrefix marks the pieces before start served, with their digests from
// the store, and feeds the bytes of the piece holding offset into r's hash.
func (s *Swarm) hashPrefix(ctx context.Context, dgst v1.Hash, l *local, start, offset int64, r *seedReader) error {
	b, err := s.store.Open(ctx, dgst)
	if err != nil {
		return fmt.Errorf("seed %s from %d: %w", dgst, offset, err)
	}
	defer b.Close()
	buf := make([]byte, s.cfg.PieceSize)
	for i := 0; int64(i)*s.cfg.PieceSize < start; i++ {
		if _, err := b.ReadAt(buf, int64(i)*s.cfg.PieceSize); err != nil {
			return fmt.Errorf("seed %s: hash stored piece %d: %w", dgst, i, err)
		}
		sum := sha256.Sum256(buf)
		l.complete(i, hex.EncodeToString(sum[:]))
	}
	part := buf[:offset-start]
	if _, err := b.ReadAt(part, start); err != nil {
		return fmt.Errorf("seed %s: read stored bytes: %w", dgst, err)
	}
	r.h.Write(part)
	r.inPiece = int64(len(part))
	return nil
}

func (s *Swarm) register(dgst v1.Hash, l *local) {
	l.ration(s.cfg.SeedCopies, 2*s.cfg.StallTimeout)
	s.mu.Lock()
	s.blobs[dgst] = l
	close(s.registered)
	s.registered = make(chan struct{})
	s.mu.Unlock()
}

// unregister forgets a blob this node stopped bringing in, unless another
// attempt registered its own meanwhile.
func (s *Swarm) unregister(dgst v1.Hash, l *local) {
	s.mu.Lock()
	if s.blobs[dgst] == l {
		delete(s.blobs, dgst)
	}
	s.mu.Unlock()
}

// announce tells the cluster, without holding up the stream, that this node
// is bringing dgst in; l.announced is closed once the cluster answered.
func (s *Swarm) announce(dgst v1.Hash, size int64, l *local) {
	go func() {
		defer close(l.announced)
		ctx, cancel := context.WithTimeout(context.Background(), s.cfg.CoordTimeout)
		defer cancel()
		if err := s.coord.Announce(ctx, dgst, size, false); err != nil {
			s.log.Debug("announcing a partial blob", "digest", dgst.String(), "err", err)
		}
	}()
}

// seedReader passes the origin's bytes through, hashing each piece, offering
// it to peers as it arrives and marking it served when it is whole.
type seedReader struct {
	s       *Swarm
	dgst    v1.Hash
	eof     bool
	body    io.ReadCloser
	l       *local
	c       prometheus.Counter
	h       hash.Hash
	piece   int   // index of the piece being read
	inPiece int64 // bytes of it read so far
	off     int64 // position in the blob
	part    *part // the piece's bytes for peers, nil if it began before this stream
}

func (r *seedReader) Read(p []byte) (int, error) {
	n, err := r.body.Read(p)
	r.c.Add(float64(n))
	for data := p[:n]; len(data) > 0; {
		want := r.l.pieceLen(r.piece) - r.inPiece
		k := min(int64(len(data)), want)
		if r.inPiece == 0 {
			r.part = newPart(r.l.pieceLen(r.piece))
			r.l.offerPart(r.piece, r.part)
		}
		if r.part != nil {
			r.part.write(data[:k])
		}
		r.h.Write(data[:k])
		r.inPiece += k
		r.off += k
		data = data[k:]
		if r.inPiece == r.l.pieceLen(r.piece) {
			// The piece is whole in the caller's hands; the store will have it
			// once the caller writes it, and piece reads wait for that.
			r.l.complete(r.piece, hex.EncodeToString(r.h.Sum(nil)))
			if r.part != nil {
				r.part.finish(true)
				r.part = nil
			}
			r.h.Reset()
			r.piece++
			r.inPiece = 0
		}
	}
	if err == io.EOF || r.off == r.l.size {
		r.eof = true // the caller may stop at the size without reading EOF
	}
	return n, err
}

// Close ends the stream. A blob read to the end stays registered for peers
// until the store commits it (Swarm.OnCommit); a broken one is forgotten.
func (r *seedReader) Close() error {
	if r.part != nil {
		r.l.dropPart(r.piece, r.part)
		r.part.finish(false)
	}
	if !r.eof {
		r.s.unregister(r.dgst, r.l)
	}
	return r.body.Close()
}

type countingReader struct {
	r io.ReadCloser
	c prometheus.Counter
}

func (r *countingReader) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	r.c.Add(float64(n))
	return n, err
}

func (r *countingReader) Close() error { return r.r.Close() }

var errNoPeers = errors.New("no peer holds the blob")

// noCount is a counter that counts nothing.
type noCount struct{ prometheus.Counter }

func (noCount) Add(float64) {}
