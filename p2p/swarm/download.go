package swarm

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/thaw-dev/thaw/metrics"
	"github.com/thaw-dev/thaw/p2p"
)

// perPeer caps the pieces one download asks of one peer at once, so that a
// download spreads over the holders.
const perPeer = 2

// bitmapGap is the least time between two bitmap requests to one holder: a
// holder's bitmap changes several times per piece, and sixteen nodes
// watching each other would otherwise spend their CPU on bitmaps.
const bitmapGap = 50 * time.Millisecond

// nearlyDone is the share of a piece, in percent, still to come when its
// fetch frees its slot for the next one.
const nearlyDone = 20

// avoidance is a peer this node does not ask, until a time.
type avoidance struct{ until time.Time }

// errBadPiece: a peer sent bytes that do not hash to the piece's digest.
var errBadPiece = errors.New("piece digest mismatch")

// errBusy: the peer refused the piece for now (upload cap, or the seeder
// has sent it to enough peers already).
var errBusy = errors.New("peer busy")

// peerState is what a download knows of one holder.
type peerState struct {
	id       p2p.NodeID
	addr     string
	seeder   bool
	have     []byte // pieces it serves whole
	part     []byte // pieces it serves while they arrive
	version  int
	trusted  bool
	inflight int
	fails    int
	busy     map[int]time.Time // pieces it refused, until when
	watching bool
}

// downloader brings one blob in from peers and is its reader: Read returns
// the blob's bytes in order, from the offset asked.
type downloader struct {
	s      *Swarm
	dgst   v1.Hash
	repo   name.Repository
	l      *local
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	// reader side, owned by the caller of Read
	cur      []byte
	skip     int64
	pos      int64
	fallback io.ReadCloser
	eof      bool

	mu           sync.Mutex
	next         int // next piece the reader takes
	peers        map[p2p.NodeID]*peerState
	inflight     map[int][]*attempt // running fetches by piece: one, two in the endgame
	running      int                // attempts in inflight
	lastProgress time.Time
	gaveUp       chan struct{} // closed when the swarm gives up
	gaveUpErr    error
	wake         chan struct{}
	advanced     chan struct{} // closed and replaced when the reader moves on
	// streamAt is the first piece the stream (see stream.go) has not taken
	// yet, or -1 with no stream: pulls take only pieces before it.
	streamAt int
	// endStream ends the stream, with the cause given (nil: no stream);
	// feeding is the holder it comes from.
	endStream context.CancelCauseFunc
	feeding   *peerState
}

// download starts bringing dgst in from peers and returns its reader.
func (s *Swarm) download(ctx context.Context, repo name.Repository, dgst v1.Hash, offset int64, st p2p.BlobState, holders []p2p.Holder) (io.ReadCloser, int64, error) {
	size := st.Size
	if size == 0 {
		var err error
		if size, err = s.probeSize(ctx, dgst, holders); err != nil {
			s.log.Warn("no holder answered, fetching from the origin", "digest", dgst.String(), "err", err)
			return s.fromOrigin(ctx, repo, dgst, offset, "fallback")
		}
	}
	if offset > size {
		return nil, 0, fmt.Errorf("blob %s: offset %d past its %d bytes", dgst, offset, size)
	}
	l := newLocal(size, s.cfg.PieceSize, false, false)
	first := int(offset / s.cfg.PieceSize)
	for i := range first {
		l.have[i] = true // already in the store: a resumed download
	}
	dctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	d := &downloader{
		s: s, dgst: dgst, repo: repo, l: l, ctx: dctx, cancel: cancel,
		skip: offset - int64(first)*s.cfg.PieceSize, pos: offset,
		next: first, peers: map[p2p.NodeID]*peerState{}, inflight: map[int][]*attempt{},
		lastProgress: time.Now(), gaveUp: make(chan struct{}), wake: make(chan struct{}, 1),
		advanced: make(chan struct{}), streamAt: first,
	}
	d.addHolders(st.Seeder, holders)
	s.register(dgst, l)
	s.announce(dgst, size, l)
	s.metrics.Blobs.WithLabelValues("swarm").Inc()
	d.wg.Add(2)
	go d.run()
	go d.startStream()
	return d, size, nil
}

// probeSize asks the holders' bitmaps for the blob's size, for up to
// FallbackAfter: a seeder just named has no answer from the origin yet.
func (s *Swarm) probeSize(ctx context.Context, dgst v1.Hash, holders []p2p.Holder) (int64, error) {
	deadline := time.Now().Add(s.cfg.FallbackAfter)
	var errs []error
	for {
		errs = errs[:0]
		for _, h := range holders {
			if s.avoided(h.Node) {
				continue
			}
			b, err := s.getBitmap(ctx, h.PeerAddr, dgst, -1, 0, 0)
			if err == nil && b.Size > 0 {
				return b.Size, nil
			}
			errs = append(errs, fmt.Errorf("%s: %w", h.Node, err))
		}
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("blob %s: %w: %w", dgst, errNoPeers, errors.Join(errs...))
		}
		select {
		case <-time.After(100 * time.Millisecond):
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	}
}

// Read implements io.Reader: the blob in order, from the swarm or, once it
// gave up, from the origin.
func (d *downloader) Read(p []byte) (int, error) {
	if d.fallback != nil {
		n, err := d.fallback.Read(p)
		d.pos += int64(n)
		d.eof = d.pos == d.l.size
		return n, err
	}
	if len(d.cur) == 0 {
		d.mu.Lock()
		next := d.next
		d.mu.Unlock()
		if next >= d.l.n {
			d.eof = true
			return 0, io.EOF
		}
		data, ok := d.l.take(next, d.gaveUp)
		if !ok {
			return d.fallBack(p)
		}
		d.cur = data[d.skip:]
		d.skip = 0
		d.mu.Lock()
		d.next++
		d.lastProgress = time.Now()
		close(d.advanced)
		d.advanced = make(chan struct{})
		d.mu.Unlock()
		d.poke()
	}
	n := copy(p, d.cur)
	d.cur = d.cur[n:]
	d.pos += int64(n)
	d.eof = d.pos == d.l.size // the caller may stop at the size without reading EOF
	return n, nil
}

// fallBack switches the reader to the origin at its current position: as
// the blob's new seeder when the leader named this node in place of a lost
// one (the pieces are hashed and offered to peers as they pass), else as a
// plain origin read.
func (d *downloader) fallBack(p []byte) (int, error) {
	d.mu.Lock()
	why := d.gaveUpErr
	d.mu.Unlock()
	reason := "fallback"
	if errors.Is(why, errTakeOver) {
		reason = "seeder"
	} else {
		d.s.log.Warn("peers made no progress, reading the rest from the origin", "digest", d.dgst.String(), "offset", d.pos, "why", why)
	}
	body, _, err := d.s.fromOrigin(d.ctx, d.repo, d.dgst, d.pos, reason)
	if err != nil {
		return 0, fmt.Errorf("blob %s: swarm gave up (%v) and the origin failed: %w", d.dgst, why, err)
	}
	if reason == "seeder" && d.pos%d.l.pieceSize == 0 {
		// fromOrigin counted the bytes already; the seed reader only hashes.
		d.l.mu.Lock()
		d.l.trusted, d.l.seeding = true, true
		d.l.mu.Unlock()
		body = &seedReader{s: d.s, dgst: d.dgst, body: body, l: d.l, c: noCount{}, h: sha256.New(),
			piece: int(d.pos / d.l.pieceSize), off: d.pos}
	}
	d.fallback = body
	n, err := body.Read(p)
	d.pos += int64(n)
	return n, err
}

// Close stops the download. A blob read to the end stays registered for
// peers until the store commits it (Swarm.OnCommit).
func (d *downloader) Close() error {
	d.cancel()
	d.wg.Wait()
	if !d.eof {
		d.s.unregister(d.dgst, d.l)
	}
	if d.fallback != nil {
		return d.fallback.Close()
	}
	return nil
}

func (d *downloader) poke() {
	select {
	case d.wake <- struct{}{}:
	default:
	}
}

// run schedules piece fetches until the blob is whole, the reader closes,
// or no progress is made for FallbackAfter.
func (d *downloader) run() {
	defer d.wg.Done()
	// While no holder it knows offers a piece it lacks (at the start of a
	// burst, before it has heard of the peers that took the seeder's first
	// copies), it asks the coordinator five times as often.
	fast := max(d.s.cfg.PollInterval/5, time.Millisecond)
	poll := time.NewTicker(fast)
	defer poll.Stop()
	refreshed := time.Now()
	for {
		starved := d.schedule()
		select {
		case <-d.ctx.Done():
			return
		case <-d.wake:
		case now := <-poll.C:
			if now.Sub(refreshed) >= d.s.cfg.PollInterval || (starved && now.Sub(refreshed) >= fast) {
				d.refreshHolders()
				refreshed = now
			}
		}
		d.mu.Lock()
		done := d.next >= d.l.n
		stalled := time.Since(d.lastProgress) > d.s.cfg.FallbackAfter
		d.mu.Unlock()
		if done {
			return
		}
		if stalled {
			d.giveUp(fmt.Errorf("no piece for %s", d.s.cfg.FallbackAfter))
			return
		}
	}
}

func (d *downloader) giveUp(err error) {
	d.mu.Lock()
	if d.gaveUpErr == nil {
		d.gaveUpErr = err
		close(d.gaveUp)
		if d.endStream != nil {
			d.endStream(err)
		}
	}
	d.mu.Unlock()
}

// refreshHolders learns new holders from the coordinator. When the blob has
// lost its seeder (it died and the leader expired it) and nobody holds it
// complete, this node claims the role: if named, it reads the rest from the
// origin as the new seeder, and the others keep taking pieces from it.
func (d *downloader) refreshHolders() {
	ctx, cancel := context.WithTimeout(d.ctx, d.s.cfg.CoordTimeout)
	defer cancel()
	st, err := d.s.coord.Blob(ctx, d.dgst)
	if err != nil {
		d.s.log.Debug("refreshing holders", "digest", d.dgst.String(), "err", err)
		return
	}
	if st.Seeder == "" && !anyComplete(st.Holders) {
		claimed, err := d.s.coord.ClaimSeeder(ctx, d.dgst, d.l.size)
		if err == nil && claimed.Seeder == d.s.coord.Self().ID {
			d.s.log.Info("the blob's seeder is gone; this node seeds the rest from the origin", "digest", d.dgst.String())
			d.giveUp(errTakeOver)
			return
		}
		if err == nil {
			st = claimed
		}
	}
	d.addHolders(st.Seeder, st.Holders)
}

func anyComplete(hs []p2p.Holder) bool {
	for _, h := range hs {
		if h.Complete {
			return true
		}
	}
	return false
}

// errTakeOver: this node was named seeder in place of one that is gone.
var errTakeOver = errors.New("named seeder in place of a lost one")

// addHolders starts watching holders not watched yet.
func (d *downloader) addHolders(seeder p2p.NodeID, holders []p2p.Holder) {
	self := d.s.coord.Self().ID
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, h := range holders {
		if h.Node == self || d.s.avoided(h.Node) {
			continue
		}
		p, ok := d.peers[h.Node]
		if !ok {
			p = &peerState{id: h.Node, addr: h.PeerAddr, version: -1, busy: map[int]time.Time{}}
			d.peers[h.Node] = p
		}
		p.seeder = h.Node == seeder
		p.addr = h.PeerAddr
		if !p.watching {
			p.watching = true
			d.wg.Add(1)
			go d.watch(p)
		}
	}
}

// watch long-polls one holder's bitmap, learning its pieces and, from a
// trusted holder, the piece digests.
func (d *downloader) watch(p *peerState) {
	defer d.wg.Done()
	hashFrom := 0
	backoff := 100 * time.Millisecond
	var asked time.Time
	for d.ctx.Err() == nil {
		d.mu.Lock()
		version, addr := p.version, p.addr
		d.mu.Unlock()
		if wait := time.Until(asked.Add(bitmapGap)); wait > 0 {
			select { // changes that come within the gap arrive together
			case <-time.After(wait):
			case <-d.ctx.Done():
				return
			}
		}
		asked = time.Now()
		b, err := d.s.getBitmap(d.ctx, addr, d.dgst, version, hashFrom, d.s.cfg.BitmapWait+d.s.cfg.StallTimeout)
		if err != nil {
			d.mu.Lock()
			p.fails++
			gone := p.fails > 5
			if gone {
				p.watching = false
				delete(d.peers, p.id)
			}
			d.mu.Unlock()
			if gone {
				return
			}
			select {
			case <-time.After(backoff):
			case <-d.ctx.Done():
			}
			backoff = min(2*backoff, 2*time.Second)
			continue
		}
		backoff = 100 * time.Millisecond
		if b.Size != d.l.size {
			d.s.log.Warn("peer disagrees on the blob's size; ignoring it", "peer", p.id, "digest", d.dgst.String(), "size", b.Size)
			d.mu.Lock()
			delete(d.peers, p.id)
			d.mu.Unlock()
			return
		}
		var conflicts []int
		hashFrom, conflicts = d.l.learnHashes(b, hashFrom)
		for _, i := range conflicts {
			d.s.log.Warn("peers disagree on a piece digest", "peer", p.id, "piece", i)
		}
		d.mu.Lock()
		p.have, p.part, p.version, p.trusted, p.fails = b.Have, b.Part, b.Version, b.Trusted, 0
		d.mu.Unlock()
		d.poke()
	}
}

// attempt is one running fetch of a piece.
type attempt struct {
	peer   *peerState
	start  time.Time
	cancel context.CancelFunc
	// dup: an endgame copy of a piece already being fetched; its bytes are
	// not offered to peers.
	dup bool
	// lost: another attempt got the piece first; this one was cancelled.
	lost bool
	// released: the attempt no longer counts against Parallel and perPeer
	// (its piece is nearly in; see fetch).
	released bool
	// streamed: the piece comes through the stream (stream.go); cancel
	// ends the stream.
	streamed bool
}

// schedule starts piece fetches up to Parallel. It reports whether it
// found fewer than that to start (no known holder offers more, and no
// stream brings the blob).
func (d *downloader) schedule() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	now := time.Now()
	for d.running < d.s.cfg.Parallel {
		i, p, dup := d.pickLocked(now)
		if p == nil {
			return d.streamAt < 0
		}
		if d.streamAt >= 0 && i >= d.streamAt+d.s.cfg.StreamLead && d.endStream != nil {
			// Another holder has pieces past the stream's lead: the stream
			// lags (a slow node ahead in the chain). Pulls take it all.
			d.endStream(errSlowStream)
			d.streamAt = -1
		}
		ctx, cancel := context.WithCancel(d.ctx)
		a := &attempt{peer: p, start: now, cancel: cancel, dup: dup}
		d.inflight[i] = append(d.inflight[i], a)
		d.running++
		p.inflight++
		d.wg.Add(1)
		go d.fetch(ctx, i, a, p.addr)
	}
	return false
}

// pickLocked chooses the next piece and holder: the piece the reader waits
// for first, then the rarest in the window; from a holder other than the
// seeder when one has it (the seeder's uplink is for pieces nobody else
// has), one that has it whole rather than arriving, the least loaded one.
// A piece whose digest is not known yet may be taken (from a peer that has
// it arriving from the seeder); it is verified once the digest comes.
//
// In the endgame, when every piece still missing is being fetched, a piece
// fetched from a peer that has it arriving is asked again of a peer that
// has it whole (dup): the first copy to arrive wins, so the blob's end does
// not wait on the slowest chain of forwarders.
func (d *downloader) pickLocked(now time.Time) (int, *peerState, bool) {
	limit := min(d.next+d.s.cfg.Window, d.l.n)
	// The stream brings the pieces from streamAt on; pulls take those past
	// its lead, which other holders have only if the stream lags.
	leadFrom, leadTo := d.l.n, d.l.n
	if d.streamAt >= 0 {
		leadFrom, leadTo = d.streamAt, d.streamAt+d.s.cfg.StreamLead
	}
	bestI, bestRarity := -1, 0
	var bestPeer *peerState
	d.l.mu.Lock()
	defer d.l.mu.Unlock()
	for i := d.next; i < limit; i++ {
		if d.l.have[i] || len(d.inflight[i]) > 0 || (i >= leadFrom && i < leadTo) {
			continue
		}
		var choice *peerState
		rarity := 0
		for _, p := range d.peers {
			if !has(p.have, i) && !has(p.part, i) {
				continue
			}
			if i >= leadTo && p == d.feeding {
				continue // the stream brings it from there
			}
			rarity++
			if p.inflight >= perPeer || now.Before(p.busy[i]) {
				continue
			}
			if choice == nil || better(p, choice, i) {
				choice = p
			}
		}
		if choice == nil {
			continue
		}
		if i == d.next {
			return i, choice, false
		}
		if bestPeer == nil || rarity < bestRarity || (rarity == bestRarity && rand.IntN(2) == 0) {
			bestI, bestRarity, bestPeer = i, rarity, choice
		}
	}
	if bestPeer != nil || limit < d.l.n || d.streamAt >= 0 {
		return bestI, bestPeer, false
	}
	return d.endgameLocked(now)
}

// endgameLocked picks, once every missing piece is being fetched, the
// longest-running single fetch of a piece from a peer that has it arriving,
// and a peer that has it whole to ask as well.
func (d *downloader) endgameLocked(now time.Time) (int, *peerState, bool) {
	bestI := -1
	var bestPeer *peerState
	var oldest time.Time
	for i := d.next; i < d.l.n; i++ {
		if d.l.have[i] {
			continue
		}
		as := d.inflight[i]
		if len(as) == 0 {
			return -1, nil, false // not the endgame: a missing piece nobody serves yet
		}
		if len(as) > 1 || as[0].streamed || has(as[0].peer.have, i) || (bestPeer != nil && !as[0].start.Before(oldest)) {
			continue
		}
		var choice *peerState
		for _, p := range d.peers {
			if p == as[0].peer || !has(p.have, i) || p.inflight >= perPeer || now.Before(p.busy[i]) {
				continue
			}
			if choice == nil || better(p, choice, i) {
				choice = p
			}
		}
		if choice != nil {
			bestI, bestPeer, oldest = i, choice, as[0].start
		}
	}
	return bestI, bestPeer, bestPeer != nil
}

// better reports whether holder a is a better source than b.
func better(a, b *peerState, i int) bool {
	if a.seeder != b.seeder {
		return !a.seeder
	}
	if wa, wb := has(a.have, i), has(b.have, i); wa != wb {
		return wa
	}
	if a.inflight != b.inflight {
		return a.inflight < b.inflight
	}
	return rand.IntN(2) == 0
}

// fetch gets piece i from p, offering its bytes to peers as they arrive
// (unless it is an endgame copy), and verifies it.
func (d *downloader) fetch(ctx context.Context, i int, a *attempt, addr string) {
	defer d.wg.Done()
	defer a.cancel()
	p := a.peer
	start := time.Now()
	pt := newPart(d.l.pieceLen(i))
	offer := func() { d.l.offerPart(i, pt) }
	if a.dup {
		offer = func() {}
	}
	// A piece nearly in frees its slot, so that the next request travels
	// (through queues as long as the links' on a busy burst) while the last
	// bytes still arrive and the link does not idle between pieces.
	nearly := func() {
		d.mu.Lock()
		d.releaseLocked(a)
		d.mu.Unlock()
		d.poke()
	}
	err := d.s.getPiece(ctx, addr, d.dgst, i, pt, offer, nearly)
	if err == nil {
		err = d.verify(ctx, i, pt.buf, p.id)
	}
	d.land(i, a, pt, err, start)
}

// land ends attempt a at piece i with err: the piece is held on success,
// and the peer blamed as the error says. A bad piece that came through the
// stream ends the stream and blames nobody (its sender may only have
// passed its own source's bytes on); the pulls fetch it again.
func (d *downloader) land(i int, a *attempt, pt *part, err error, start time.Time) {
	p := a.peer
	data := pt.buf
	result := "ok"
	d.mu.Lock()
	d.inflight[i] = slices.DeleteFunc(d.inflight[i], func(o *attempt) bool { return o == a })
	if len(d.inflight[i]) == 0 {
		delete(d.inflight, i)
	}
	d.releaseLocked(a)
	if err == nil {
		for _, o := range d.inflight[i] { // the endgame's other copy lost
			o.lost = true
			if !o.streamed {
				o.cancel()
			}
		}
	}
	switch {
	case a.lost:
		result = "lost"
		err = errLost
	case err == nil:
		p.fails = 0
		d.lastProgress = time.Now()
	case errors.Is(err, errBadPiece) && a.streamed:
		result = "bad"
		a.cancel()
	case errors.Is(err, errBadPiece):
		result = "bad"
		delete(d.peers, p.id)
		p.have = nil
	case errors.Is(err, errBusy):
		result = "busy"
		p.busy[i] = time.Now().Add(100 * time.Millisecond)
	case errors.Is(err, errStalled), errors.Is(err, errSlowStream):
		result = "stalled"
		p.busy[i] = time.Now().Add(d.s.cfg.StallTimeout)
	default:
		result = "error"
		p.fails++
		p.busy[i] = time.Now().Add(time.Second)
	}
	// Under d.mu, so that no new fetch of the piece starts in between.
	if err == nil {
		d.l.hold(i, data)
	} else {
		d.l.dropPart(i, pt)
	}
	d.mu.Unlock()
	pt.finish(err == nil)
	d.s.metrics.PieceDuration.WithLabelValues(result).Observe(time.Since(start).Seconds())
	switch {
	case err == nil:
		d.s.fetched.WithLabelValues(metrics.SourcePeer).Add(float64(len(data)))
		d.s.log.Debug("piece fetched", "peer", p.id, "piece", i, "seconds", time.Since(start).Seconds())
	case errors.Is(err, errBadPiece) && a.streamed:
		d.s.log.Warn("a piece through the stream was bad; pulling the rest", "peer", p.id, "piece", i, "digest", d.dgst.String())
	case errors.Is(err, errBadPiece):
		d.s.log.Warn("peer sent a bad piece; avoiding it", "peer", p.id, "piece", i, "digest", d.dgst.String())
		d.s.avoidPeer(p.id)
	case d.ctx.Err() == nil && !errors.Is(err, errBusy) && !errors.Is(err, errLost):
		d.s.log.Debug("piece fetch failed", "peer", p.id, "piece", i, "err", err)
	}
	d.poke()
}

// releaseLocked stops counting a against Parallel and its peer's perPeer.
func (d *downloader) releaseLocked(a *attempt) {
	if !a.released {
		a.released = true
		d.running--
		a.peer.inflight--
	}
}

// errLost: an endgame fetch another copy of the piece beat.
var errLost = errors.New("another copy of the piece arrived first")

// verify checks piece i's bytes against its digest, waiting up to
// StallTimeout for the digest if the piece came before it.
func (d *downloader) verify(ctx context.Context, i int, data []byte, from p2p.NodeID) error {
	ctx, cancel := context.WithTimeout(ctx, d.s.cfg.StallTimeout)
	defer cancel()
	want := d.l.waitHash(i, ctx.Done())
	if want == "" {
		return fmt.Errorf("piece %d of %s from %s: no digest came for it", i, d.dgst, from)
	}
	sum := sha256.Sum256(data)
	if hex.EncodeToString(sum[:]) != want {
		return fmt.Errorf("piece %d of %s from %s: %w", i, d.dgst, from, errBadPiece)
	}
	return nil
}

func (s *Swarm) avoided(id p2p.NodeID) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	a, ok := s.avoid[id]
	if ok && time.Now().After(a.until) {
		delete(s.avoid, id)
		return false
	}
	return ok
}

func (s *Swarm) avoidPeer(id p2p.NodeID) {
	s.mu.Lock()
	s.avoid[id] = avoidance{until: time.Now().Add(s.cfg.AvoidFor)}
	s.mu.Unlock()
	s.metrics.BadPeers.Inc()
}

// errStalled: a piece request delivered no byte for StallTimeout.
var errStalled = errors.New("peer stalled")

// getPiece fetches piece i of dgst from the peer at addr into pt, calling
// offer once the peer answered with the piece's bytes to come and nearly
// once the last nearlyDone of them are all that is left.
func (s *Swarm) getPiece(ctx context.Context, addr string, dgst v1.Hash, i int, pt *part, offer, nearly func()) error {
	size := int64(len(pt.buf))
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	stall := time.AfterFunc(s.cfg.StallTimeout, func() { cancel(errStalled) })
	defer stall.Stop()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+addr+"/p2p/v1/blobs/"+dgst.String()+"/pieces/"+strconv.Itoa(i), nil)
	if err != nil {
		return err
	}
	req.Header.Set(PeerHeader, string(s.coord.Self().ID))
	resp, err := s.client.Do(req)
	if err != nil {
		return causeOr(ctx, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		// Read the short error body so the connection is reused: a refusal
		// must not cost a new TCP connection and TLS handshake.
		io.Copy(io.Discard, io.LimitReader(resp.Body, 4<<10))
	}
	switch resp.StatusCode {
	case http.StatusOK:
	case http.StatusServiceUnavailable, http.StatusNotFound:
		return fmt.Errorf("piece %d: %s: %w", i, resp.Status, errBusy)
	default:
		return fmt.Errorf("piece %d: %s", i, resp.Status)
	}
	if resp.ContentLength != size {
		return fmt.Errorf("piece %d: %d bytes announced, want %d", i, resp.ContentLength, size)
	}
	offer()
	var got int64
	for got < size {
		n, err := resp.Body.Read(pt.buf[got:min(got+chunk, size)])
		if n > 0 {
			stall.Reset(s.cfg.StallTimeout)
			if s.downLimit != nil {
				if err := s.downLimit.WaitN(ctx, n); err != nil {
					return causeOr(ctx, err)
				}
			}
			got += int64(n)
			pt.advance(n)
			if nearly != nil && got >= size-size*nearlyDone/100 {
				nearly()
				nearly = nil
			}
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return causeOr(ctx, err)
		}
	}
	if got != size {
		return fmt.Errorf("piece %d: got %d of %d bytes", i, got, size)
	}
	return nil
}

// getBitmap asks the peer at addr for its bitmap of dgst, newer than after.
func (s *Swarm) getBitmap(ctx context.Context, addr string, dgst v1.Hash, after, hashFrom int, timeout time.Duration) (bitmap, error) {
	if timeout == 0 {
		timeout = s.cfg.CoordTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	url := fmt.Sprintf("https://%s/p2p/v1/blobs/%s/pieces?after=%d&hashFrom=%d", addr, dgst, after, hashFrom)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return bitmap{}, err
	}
	req.Header.Set(PeerHeader, string(s.coord.Self().ID))
	resp, err := s.client.Do(req)
	if err != nil {
		return bitmap{}, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		io.Copy(io.Discard, io.LimitReader(resp.Body, 4<<10)) // keep the connection
		return bitmap{}, fmt.Errorf("bitmap of %s from %s: %s", dgst, addr, resp.Status)
	}
	var b bitmap
	if err := json.NewDecoder(io.LimitReader(resp.Body, 16<<20)).Decode(&b); err != nil {
		return bitmap{}, fmt.Errorf("bitmap of %s from %s: %w", dgst, addr, err)
	}
	if b.PieceSize != s.cfg.PieceSize {
		return bitmap{}, fmt.Errorf("bitmap of %s from %s: piece size %d, this node uses %d", dgst, addr, b.PieceSize, s.cfg.PieceSize)
	}
	return b, nil
}

func causeOr(ctx context.Context, err error) error {
	if c := context.Cause(ctx); c != nil && !errors.Is(c, context.Canceled) {
		return c
	}
	return err
}
