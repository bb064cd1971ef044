package swarm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/thaw-dev/thaw/p2p"
)

// A burst's downloads form a chain: each node streams the blob, in order
// and in one response, from the holder that arrived just before it (by
// p2p.Holder.Since; the first after the seeder streams from the seeder),
// and passes every byte on to the next one as it comes. Every uplink then
// carries one copy of the blob at the pace the seeder reads it, and no
// piece waits for a bitmap notice and a request at each hop. The stream
// carries bytes before they are verified (the hold-back would stop the
// chain at every piece's end); each node verifies every piece itself
// against the trusted digests, and a piece that fails ends the stream
// without blaming the sender, which may only have passed on its own
// source's bytes. Whatever the stream does not bring (it broke, stalled,
// lagged behind other holders or carried a bad piece) the piece pulls fetch.

// serveStream sends the pieces of a blob from piece `from` on, in order,
// each as soon as this node has its bytes: a whole piece at once, an
// arriving one as its bytes come. A blob this node does not bring in yet is
// waited for up to StallTimeout (the seeder registers it once the origin
// answered). A piece that does not come within StallTimeout, or fails here,
// cuts the response short.
func (s *Swarm) serveStream(w http.ResponseWriter, r *http.Request) {
	u, ok := s.openUpload(w, r, r.URL.Query().Get("from"), s.cfg.StallTimeout)
	if !ok {
		return
	}
	defer u.release()
	l, dgst, from, peer := u.l, u.dgst, u.i, u.peer
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Length", strconv.FormatInt(l.size-int64(from)*l.pieceSize, 10))
	rc := http.NewResponseController(w)
	uploaded := s.metrics.UploadBytes.WithLabelValues(peer)
	for i := from; i < l.n; i++ {
		n, err := s.streamPiece(r, w, rc, l, dgst, i)
		uploaded.Add(float64(n)) // piece by piece: a stream lasts as long as the blob
		if err != nil {
			s.log.Debug("stream cut short", "peer", peer, "digest", dgst.String(), "piece", i, "err", err)
			panic(http.ErrAbortHandler) // the receiver must see a broken stream, not an end
		}
	}
}

// streamPiece waits up to StallTimeout for piece i and sends it.
func (s *Swarm) streamPiece(r *http.Request, w io.Writer, rc *http.ResponseController, l *local, dgst v1.Hash, i int) (int64, error) {
	ctx, cancel := context.WithTimeout(r.Context(), s.cfg.StallTimeout)
	pt, ok := l.awaitPiece(i, ctx.Done())
	cancel()
	if !ok {
		return 0, fmt.Errorf("piece %d did not come within %s", i, s.cfg.StallTimeout)
	}
	defer l.done(i)
	if pt == nil {
		src, closeSrc, err := s.wholePiece(r.Context(), l, dgst, i)
		if err != nil {
			return 0, err
		}
		defer closeSrc()
		n, err := copyLimited(r.Context(), w, src, s.upLimit)
		if err == nil && n != l.pieceLen(i) {
			err = fmt.Errorf("piece %d: read %d of %d bytes", i, n, l.pieceLen(i))
		}
		if err == nil {
			err = rc.Flush() // the piece's tail must not wait for the next piece
		}
		return n, err
	}
	var sent int64
	for sent < int64(len(pt.buf)) {
		limit, st := pt.arrived(sent, r.Context().Done())
		if st == partFailed {
			return sent, fmt.Errorf("piece %d failed here", i)
		}
		n, err := copyLimited(r.Context(), w, byteReader(pt.buf[sent:limit]), s.upLimit)
		sent += n
		if err != nil {
			return sent, err
		}
		if err := rc.Flush(); err != nil {
			return sent, err
		}
	}
	return sent, nil
}

// errBadStream: a piece that came through the stream failed its digest.
var errBadStream = errors.New("a streamed piece failed its digest")

// errSlowStream: other holders have pieces past the stream's lead.
var errSlowStream = errors.New("the stream lags behind other holders")

// maxStreams bounds the streams one download opens: one, and one more from
// an earlier holder each time a stream breaks or stalls.
const maxStreams = 3

// startStream streams the blob from the holder that arrived just before
// this node; when that stream breaks or stalls (the holder died or hangs),
// from the holder before that one, which has the pieces the lost one had
// not passed on yet. The piece a broken stream left half read goes on
// filling from the next stream, so the nodes streaming it from this one
// see a pause rather than a failed piece (which would break their streams
// too). With no holder to stream from, or once the stream carried a bad
// piece or lagged, the pulls take every piece left.
func (d *downloader) startStream() {
	defer d.wg.Done()
	var carry *pending
	var err error
	defer func() {
		if carry != nil {
			d.land(carry.i, carry.a, carry.pt, err, carry.a.start)
		}
		d.mu.Lock()
		d.streamAt = -1
		d.mu.Unlock()
		d.poke()
	}()
	if !d.s.cfg.Stream {
		return
	}
	tried := map[p2p.NodeID]bool{}
	for n := 1; n <= maxStreams; n++ {
		p := d.feeder(tried)
		if p == nil {
			return
		}
		tried[p.id] = true
		d.mu.Lock()
		from := d.firstMissingLocked()
		if carry != nil {
			from = carry.i
		}
		d.streamAt = from
		d.mu.Unlock()
		if from >= d.l.n {
			return
		}
		carry, err = d.stream(p, from, carry)
		end := d.streamEnd(err)
		d.s.metrics.Streams.WithLabelValues(end).Inc()
		switch end {
		case "done", "gaveup":
			return
		case "bad", "lagged":
			d.s.log.Debug("stream ended; pulling the rest", "peer", p.id, "digest", d.dgst.String(), "err", err)
			return
		}
		d.s.log.Info("stream broke", "peer", p.id, "digest", d.dgst.String(), "err", err, "streams left", maxStreams-n)
	}
}

// pending is a piece a broken stream left half read.
type pending struct {
	i  int
	a  *attempt
	pt *part
}

// streamEnd names how a stream ended, for the metric.
func (d *downloader) streamEnd(err error) string {
	select {
	case <-d.gaveUp: // the reader goes to the origin
		return "gaveup"
	default:
	}
	switch {
	case err == nil || d.ctx.Err() != nil:
		return "done"
	case errors.Is(err, errBadStream):
		return "bad"
	case errors.Is(err, errSlowStream):
		return "lagged"
	}
	return "broke"
}

// firstMissingLocked is the first piece from the reader's on that this node
// neither has nor is fetching.
func (d *downloader) firstMissingLocked() int {
	d.l.mu.Lock()
	defer d.l.mu.Unlock()
	i := d.next
	for i < d.l.n && (d.l.have[i] || len(d.inflight[i]) > 0) {
		i++
	}
	return i
}

// feeder returns the holder this node streams from: among those that
// arrived before it (by Since) and not tried yet, the latest; none when
// several hold the blob complete (pulls from all of them are faster than
// one stream). It waits for this node's own announcement to be recorded,
// since that is what orders it.
func (d *downloader) feeder(tried map[p2p.NodeID]bool) *peerState {
	ctx, cancel := context.WithTimeout(d.ctx, d.s.cfg.CoordTimeout)
	defer cancel()
	select {
	case <-d.l.announced:
	case <-ctx.Done():
		return nil
	}
	self := d.s.coord.Self().ID
	for {
		st, err := d.s.coord.Blob(ctx, d.dgst)
		if err != nil {
			return nil
		}
		var mine uint64
		for _, h := range st.Holders {
			if h.Node == self {
				mine = h.Since
			}
		}
		if mine != 0 {
			complete := 0
			for _, h := range st.Holders {
				if h.Complete && h.Node != self {
					complete++
				}
			}
			if complete > 1 {
				return nil // pulls spread over the complete holders
			}
			var best *p2p.Holder
			for _, h := range st.Holders {
				if h.Node != self && !tried[h.Node] && h.Since != 0 && h.Since < mine && !d.s.avoided(h.Node) && (best == nil || h.Since > best.Since) {
					best = &h
				}
			}
			if best == nil {
				return nil
			}
			d.addHolders(st.Seeder, []p2p.Holder{*best})
			d.mu.Lock()
			defer d.mu.Unlock()
			return d.peers[best.Node]
		}
		select { // a voter that has not applied this node's announcement yet
		case <-time.After(20 * time.Millisecond):
		case <-ctx.Done():
			return nil
		}
	}
}

// stream reads the blob from p in order, from piece from on, handing each
// piece to verification as it completes and going on with the next. carry,
// if not nil, is piece from half read by an earlier stream: its bytes so
// far are skipped and the rest fills the same part. A stream that breaks
// inside a piece returns it as pending.
func (d *downloader) stream(p *peerState, from int, carry *pending) (*pending, error) {
	ctx, cancel := context.WithCancelCause(d.ctx)
	defer cancel(nil)
	d.mu.Lock()
	d.endStream, d.feeding = cancel, p
	addr := p.addr // addHolders may change it
	if carry != nil {
		carry.a.peer, carry.a.cancel = p, func() { cancel(errBadStream) }
	}
	d.mu.Unlock()
	defer func() {
		d.mu.Lock()
		d.endStream, d.feeding = nil, nil
		d.mu.Unlock()
	}()
	stall := time.AfterFunc(d.s.cfg.StallTimeout, func() { cancel(errStalled) })
	defer stall.Stop()
	url := fmt.Sprintf("https://%s/p2p/v1/blobs/%s/stream?from=%d", addr, d.dgst, from)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return carry, err
	}
	req.Header.Set(PeerHeader, string(d.s.coord.Self().ID))
	resp, err := d.s.client.Do(req)
	if err != nil {
		return carry, causeOr(ctx, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		io.Copy(io.Discard, io.LimitReader(resp.Body, 4<<10))
		return carry, fmt.Errorf("stream from %s: %s", p.id, resp.Status)
	}
	if want := d.l.size - int64(from)*d.l.pieceSize; resp.ContentLength != want {
		return carry, fmt.Errorf("stream from %s: %d bytes announced, want %d", p.id, resp.ContentLength, want)
	}
	body := &stallReader{r: resp.Body, stall: stall, d: d.s.cfg.StallTimeout}
	for i := from; i < d.l.n; i++ {
		size := d.l.pieceLen(i)
		var a *attempt
		var pt *part
		if carry != nil && carry.i == i {
			a, pt, carry = carry.a, carry.pt, nil
			if _, err := io.CopyN(io.Discard, body, pt.arrivedBytes()); err != nil {
				return &pending{i: i, a: a, pt: pt}, causeOr(ctx, err)
			}
		} else {
			stall.Stop() // waiting for the reader is not the holder's stall
			err := d.awaitWindow(ctx, i)
			stall.Reset(d.s.cfg.StallTimeout)
			if err != nil {
				return nil, causeOr(ctx, err)
			}
			d.mu.Lock()
			d.l.mu.Lock()
			skip := d.l.have[i] || len(d.inflight[i]) > 0
			d.l.mu.Unlock()
			if !skip {
				a = &attempt{peer: p, start: time.Now(), cancel: func() { cancel(errBadStream) }, released: true, streamed: true}
				d.inflight[i] = append(d.inflight[i], a)
				pt = newPart(size)
			}
			d.streamAt = i + 1
			d.mu.Unlock()
			if skip {
				if _, err := io.CopyN(io.Discard, body, size); err != nil {
					return nil, causeOr(ctx, err)
				}
				continue
			}
			d.l.offerPart(i, pt)
		}
		if err := d.readPart(ctx, body, pt); err != nil {
			return &pending{i: i, a: a, pt: pt}, causeOr(ctx, err)
		}
		d.wg.Add(1)
		go func() {
			defer d.wg.Done()
			d.land(i, a, pt, d.verify(d.ctx, i, pt.buf, a.peer.id), a.start)
		}()
	}
	return nil, nil
}

// readPart fills the rest of pt from r, as its bytes come.
func (d *downloader) readPart(ctx context.Context, r io.Reader, pt *part) error {
	size := int64(len(pt.buf))
	got := pt.arrivedBytes()
	for got < size {
		n, err := r.Read(pt.buf[got:min(got+chunk, size)])
		if n > 0 {
			if d.s.downLimit != nil {
				if err := d.s.downLimit.WaitN(ctx, n); err != nil {
					return err
				}
			}
			got += int64(n)
			pt.advance(n)
		}
		if err == io.EOF && got < size {
			return io.ErrUnexpectedEOF
		}
		if err != nil && err != io.EOF {
			return err
		}
	}
	return nil
}

// awaitWindow waits until piece i is within Window pieces of the reader.
func (d *downloader) awaitWindow(ctx context.Context, i int) error {
	for {
		d.mu.Lock()
		ok, ch := i < d.next+d.s.cfg.Window, d.advanced
		d.mu.Unlock()
		if ok {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// stallReader resets a stall timer on every byte read.
type stallReader struct {
	r     io.Reader
	stall *time.Timer
	d     time.Duration
}

func (s *stallReader) Read(p []byte) (int, error) {
	n, err := s.r.Read(p)
	if n > 0 {
		s.stall.Reset(s.d)
	}
	return n, err
}
