package swarm

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/thaw-dev/thaw/puller"
)

// Handler serves the data plane routes, for the caller to mount on the
// mutual-TLS peer server:
//
//	GET /p2p/v1/blobs/{digest}/pieces?after=V&hashFrom=K   the bitmap (long poll past version V)
//	GET /p2p/v1/blobs/{digest}/pieces/{i}                  piece i
//	GET /p2p/v1/blobs/{digest}/stream?from=I               pieces I.. in order, as they come
func (s *Swarm) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /p2p/v1/blobs/{digest}/pieces", s.serveBitmap)
	mux.HandleFunc("GET /p2p/v1/blobs/{digest}/pieces/{index}", s.servePiece)
	mux.HandleFunc("GET /p2p/v1/blobs/{digest}/stream", s.serveStream)
	return mux
}

// PeerHeader carries the asking node's ID, for per-peer upload metrics.
const PeerHeader = "X-Thaw-Node"

func (s *Swarm) serveBitmap(w http.ResponseWriter, r *http.Request) {
	dgst, err := v1.NewHash(r.PathValue("digest"))
	if err != nil {
		http.Error(w, "bad digest: "+err.Error(), http.StatusBadRequest)
		return
	}
	after, _ := strconv.Atoi(r.URL.Query().Get("after"))
	hashFrom, _ := strconv.Atoi(r.URL.Query().Get("hashFrom"))
	l, err := s.servable(r, dgst)
	if err != nil {
		writeErr(w, err)
		return
	}
	timer := time.NewTimer(s.cfg.BitmapWait)
	defer timer.Stop()
	stop := make(chan struct{})
	go func() {
		select {
		case <-timer.C:
		case <-r.Context().Done():
		}
		close(stop)
	}()
	b := l.snapshot(after, hashFrom, stop)
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(b)
}

func (s *Swarm) servePiece(w http.ResponseWriter, r *http.Request) {
	u, ok := s.openUpload(w, r, r.PathValue("index"), 0)
	if !ok {
		return
	}
	defer u.release()
	l, dgst, i, peer := u.l, u.dgst, u.i, u.peer
	l.mu.Lock()
	ok, pt := l.have[i], l.parts[i]
	l.mu.Unlock()
	if !ok && pt == nil {
		http.Error(w, "piece not here yet", http.StatusNotFound)
		return
	}
	if !l.allow(i, s.cfg.PieceUploads, time.Now()) {
		http.Error(w, "this piece is on its way to other peers already; ask them", http.StatusServiceUnavailable)
		return
	}
	defer l.done(i)
	if !ok {
		s.streamPart(w, r, pt, peer)
		return
	}
	src, closeSrc, err := s.wholePiece(r.Context(), l, dgst, i)
	if err != nil {
		writeErr(w, err)
		return
	}
	defer closeSrc()
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Length", strconv.FormatInt(l.pieceLen(i), 10))
	n, _ := copyLimited(r.Context(), w, src, s.upLimit)
	s.metrics.UploadBytes.WithLabelValues(peer).Add(float64(n))
}

// upload is a piece or stream request taken on: the blob, the first piece
// asked for, the asking node, and the upload slot to release.
type upload struct {
	l       *local
	dgst    v1.Hash
	i       int
	peer    string
	release func()
}

// openUpload parses the digest and the piece index of an upload request,
// takes an upload slot (MaxUploads) and finds the blob, waiting up to wait
// for this node to start bringing it in. When it cannot, it has answered
// the request and returns false.
func (s *Swarm) openUpload(w http.ResponseWriter, r *http.Request, index string, wait time.Duration) (upload, bool) {
	dgst, err := v1.NewHash(r.PathValue("digest"))
	if err != nil {
		http.Error(w, "bad digest: "+err.Error(), http.StatusBadRequest)
		return upload{}, false
	}
	i, err := strconv.Atoi(index)
	if err != nil || i < 0 {
		http.Error(w, "bad or missing piece index", http.StatusBadRequest)
		return upload{}, false
	}
	select {
	case s.uploads <- struct{}{}:
	default:
		s.metrics.UploadsRefused.Inc()
		http.Error(w, "upload cap reached, ask another holder", http.StatusServiceUnavailable)
		return upload{}, false
	}
	release := func() { <-s.uploads }
	l, err := s.servable(r, dgst)
	if errors.Is(err, puller.ErrNotFound) && wait > 0 {
		l, err = s.awaitServable(r, dgst, wait)
	}
	if err != nil {
		release()
		writeErr(w, err)
		return upload{}, false
	}
	if i >= l.n {
		release()
		http.Error(w, fmt.Sprintf("piece %d of %d", i, l.n), http.StatusRequestedRangeNotSatisfiable)
		return upload{}, false
	}
	peer := r.Header.Get(PeerHeader)
	if peer == "" {
		peer = "unknown"
	}
	return upload{l: l, dgst: dgst, i: i, peer: peer, release: release}, true
}

// awaitServable waits up to wait for this node to start bringing dgst in
// (a seeder registers a blob once the origin answered, which may be after
// the first node of the chain asked for its stream).
func (s *Swarm) awaitServable(r *http.Request, dgst v1.Hash, wait time.Duration) (*local, error) {
	timer := time.NewTimer(wait)
	defer timer.Stop()
	for {
		s.mu.Lock()
		l, ch := s.blobs[dgst], s.registered
		s.mu.Unlock()
		if l != nil {
			return l, nil
		}
		select {
		case <-ch:
		case <-timer.C:
			return s.servable(r, dgst)
		case <-r.Context().Done():
			return nil, r.Context().Err()
		}
	}
}

// wholePiece reads piece i, which this node has whole: from memory while
// the reader has not taken it, else from the store.
func (s *Swarm) wholePiece(ctx context.Context, l *local, dgst v1.Hash, i int) (io.Reader, func(), error) {
	if data, ok := l.memPiece(i); ok {
		return byteReader(data), func() {}, nil
	}
	b, err := s.store.Open(ctx, dgst)
	if err != nil {
		return nil, nil, err
	}
	return io.NewSectionReader(b, int64(i)*l.pieceSize, l.pieceLen(i)), func() { b.Close() }, nil
}

// streamPart sends a piece while it arrives on this node, as its bytes
// come. The last holdBack bytes go only once the piece is verified here; if
// it fails, the response is cut short, so the asker discards what it got
// and takes the piece elsewhere.
func (s *Swarm) streamPart(w http.ResponseWriter, r *http.Request, pt *part, peer string) {
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Length", strconv.Itoa(len(pt.buf)))
	rc := http.NewResponseController(w)
	var sent int64
	defer func() { s.metrics.UploadBytes.WithLabelValues(peer).Add(float64(sent)) }()
	for sent < int64(len(pt.buf)) {
		limit, st := pt.servable(sent, r.Context().Done())
		if st == partFailed {
			panic(http.ErrAbortHandler)
		}
		n, err := copyLimited(r.Context(), w, byteReader(pt.buf[sent:limit]), s.upLimit)
		sent += n
		if err != nil {
			return
		}
		if err := rc.Flush(); err != nil {
			return
		}
	}
}

// servable returns what this node can serve of dgst: the blob it is bringing
// in, or a complete blob of its store (all pieces, digests computed once).
func (s *Swarm) servable(r *http.Request, dgst v1.Hash) (*local, error) {
	s.mu.Lock()
	l := s.blobs[dgst]
	s.mu.Unlock()
	if l != nil {
		return l, nil
	}
	return s.completeLocal(r, dgst)
}

// completeLocal describes a complete blob of the store as a fully served
// local, computing its piece digests on first use and caching them.
func (s *Swarm) completeLocal(r *http.Request, dgst v1.Hash) (*local, error) {
	b, err := s.store.Open(r.Context(), dgst)
	if err != nil {
		return nil, err
	}
	defer b.Close()
	if !b.Complete() {
		return nil, fmt.Errorf("blob %s is partial here: %w", dgst, puller.ErrNotFound)
	}
	s.mu.Lock()
	l, ok := s.done.Get(dgst)
	s.mu.Unlock()
	if ok {
		return l, nil
	}
	// The store verified the whole blob: its digests are first-hand.
	l = newLocal(b.Size(), s.cfg.PieceSize, true, false)
	buf := make([]byte, s.cfg.PieceSize)
	for i := range l.n {
		p := buf[:l.pieceLen(i)]
		if _, err := b.ReadAt(p, int64(i)*l.pieceSize); err != nil && !errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("hash piece %d of %s: %w", i, dgst, err)
		}
		sum := sha256.Sum256(p)
		l.hashes[i] = hex.EncodeToString(sum[:])
		l.have[i] = true
	}
	l.version = 1
	s.mu.Lock()
	s.done.Add(dgst, l)
	s.mu.Unlock()
	return l, nil
}

func writeErr(w http.ResponseWriter, err error) {
	status := http.StatusInternalServerError
	if errors.Is(err, puller.ErrNotFound) {
		status = http.StatusNotFound
	}
	http.Error(w, err.Error(), status)
}
