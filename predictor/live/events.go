package live

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/google/go-containerregistry/pkg/name"

	"github.com/thaw-dev/thaw/predictor"
)

// ErrBadEvent is wrapped by every error about a malformed event, batch or
// hint; the message names the event (by its index in the batch) and the
// field.
var ErrBadEvent = errors.New("bad event")

// Limits on what arrives from the network.
const (
	// MaxBatchEvents is the most events one POST /api/v1/events carries.
	MaxBatchEvents = 1000
	// MaxBatchBytes bounds the body of one POST.
	MaxBatchBytes = 1 << 20
	// MaxWindow is the longest time window one event may cover.
	MaxWindow = time.Hour
	// MaxCount bounds one event's count.
	MaxCount = 1 << 30
	// maxName bounds function names.
	maxName = 256
)

// Event is one piece of activity: Count invocations (or container starts)
// of Function, which runs Image, in the time window [Start, End). This is
// the body schema of POST /api/v1/events, inside a Batch:
//
//	{"events": [
//	  {"function": "resize", "image": "registry.example/fn/resize:v3",
//	   "count": 42, "start": "2026-11-26T12:00:00Z", "end": "2026-11-26T12:01:00Z"}
//	]}
//
// function: the app's name, 1-256 bytes, no control characters; it is what
// the predictor models and plans for (several functions of one app should
// post the app's name). image: an image reference (tag or digest) the
// function runs. count: invocations in the window, 1 to 2^30. start: RFC
// 3339 time the window opens; end: when it closes, after start and at most
// an hour later; omitted, the window is the minute that holds start. The
// count is spread evenly over the window's minutes. Windows more than the
// model's history in the past or more than a minute in the future are
// refused.
type Event struct {
	Function string    `json:"function"`
	Image    string    `json:"image"`
	Count    int       `json:"count"`
	Start    time.Time `json:"start"`
	End      time.Time `json:"end,omitzero"`
}

// Batch is the body of POST /api/v1/events.
type Batch struct {
	Events []Event `json:"events"`
}

// ParseBatch decodes and validates a batch read from r (at most
// MaxBatchBytes). now bounds the windows: none may end more than a minute
// after now nor start before now-history. Unknown fields are refused, so a
// misspelt field is an error, not a silent zero.
func ParseBatch(r io.Reader, now time.Time, history time.Duration) (Batch, error) {
	body, err := io.ReadAll(io.LimitReader(r, MaxBatchBytes+1))
	if err != nil {
		return Batch{}, fmt.Errorf("%w: read body: %v", ErrBadEvent, err)
	}
	if len(body) > MaxBatchBytes {
		return Batch{}, fmt.Errorf("%w: body over %d bytes", ErrBadEvent, MaxBatchBytes)
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	var b Batch
	if err := dec.Decode(&b); err != nil {
		return Batch{}, fmt.Errorf("%w: %s", ErrBadEvent, jsonError(body, err))
	}
	if dec.More() {
		return Batch{}, fmt.Errorf("%w: data after the batch object", ErrBadEvent)
	}
	if len(b.Events) == 0 {
		return Batch{}, fmt.Errorf("%w: no events (want {\"events\": [...]})", ErrBadEvent)
	}
	if len(b.Events) > MaxBatchEvents {
		return Batch{}, fmt.Errorf("%w: %d events in one batch, at most %d", ErrBadEvent, len(b.Events), MaxBatchEvents)
	}
	for i := range b.Events {
		if err := b.Events[i].normalize(now, history); err != nil {
			return Batch{}, fmt.Errorf("%w: event %d: %v", ErrBadEvent, i, err)
		}
	}
	return b, nil
}

// jsonError says where in body a decoding error is.
func jsonError(body []byte, err error) string {
	var off int64 = -1
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	switch {
	case errors.As(err, &se):
		off = se.Offset
	case errors.As(err, &te):
		return fmt.Sprintf("field %q: %v", te.Field, err)
	}
	if off < 0 {
		return err.Error()
	}
	line := 1 + bytes.Count(body[:min(off, int64(len(body)))], []byte("\n"))
	return fmt.Sprintf("line %d: %v", line, err)
}

// normalize checks e and fills in End.
func (e *Event) normalize(now time.Time, history time.Duration) error {
	if err := checkFunction(e.Function); err != nil {
		return err
	}
	if _, err := name.ParseReference(e.Image); err != nil {
		return fmt.Errorf("image %q: %v", e.Image, err)
	}
	if e.Count < 1 || e.Count > MaxCount {
		return fmt.Errorf("count %d: want 1 to %d", e.Count, MaxCount)
	}
	if e.Start.IsZero() {
		return fmt.Errorf("start: missing (an RFC 3339 time)")
	}
	e.Start = e.Start.UTC()
	if e.End.IsZero() {
		e.End = predictor.MinuteStart(predictor.Minute(e.Start) + 1)
	}
	e.End = e.End.UTC()
	switch {
	case !e.End.After(e.Start):
		return fmt.Errorf("end %s is not after start %s", e.End.Format(time.RFC3339), e.Start.Format(time.RFC3339))
	case e.End.Sub(e.Start) > MaxWindow:
		return fmt.Errorf("window %s is longer than %s", e.End.Sub(e.Start), MaxWindow)
	case e.End.After(now.Add(time.Minute)):
		return fmt.Errorf("end %s is in the future", e.End.Format(time.RFC3339))
	case e.Start.Before(now.Add(-history)):
		return fmt.Errorf("start %s is older than the history kept (%s)", e.Start.Format(time.RFC3339), history)
	}
	return nil
}

func checkFunction(f string) error {
	if f == "" || len(f) > maxName {
		return fmt.Errorf("function %q: want 1 to %d bytes", f, maxName)
	}
	for _, r := range f {
		if r < ' ' || r == 0x7f {
			return fmt.Errorf("function %q: control character", f)
		}
	}
	return nil
}

// minutes spreads e's count over the minutes its window overlaps, in
// proportion to the overlap, keeping the total exact.
func (e Event) minutes() map[int64]int {
	first, last := predictor.Minute(e.Start), predictor.Minute(e.End.Add(-time.Nanosecond))
	out := make(map[int64]int, last-first+1)
	total := e.End.Sub(e.Start)
	given := 0
	for m := first; m <= last; m++ {
		to := predictor.MinuteStart(m + 1)
		if e.End.Before(to) {
			to = e.End
		}
		// Cumulative rounding: the share up to the end of this minute.
		upto := int(int64(e.Count) * int64(to.Sub(e.Start)) / int64(total))
		if m == last {
			upto = e.Count
		}
		if n := upto - given; n > 0 {
			out[m] = n
		}
		given = upto
	}
	return out
}

// Hint is the body of POST /api/v1/hints (`thaw hint`): Function, running
// Image, is expected at At (zero: now) at Rate invocations per minute
// (zero: a single instance), for For (zero: ten minutes).
type Hint struct {
	Function string        `json:"function"`
	Image    string        `json:"image"`
	At       time.Time     `json:"at,omitzero"`
	Rate     int           `json:"rate,omitempty"`
	For      time.Duration `json:"for,omitempty"`
}

// MaxHintFor is the longest a hint lasts, and MaxHintAhead how far ahead
// it may be given.
const (
	MaxHintFor   = 24 * time.Hour
	MaxHintAhead = 7 * 24 * time.Hour
)

// ParseHint decodes and validates a hint read from r, filling in its
// defaults at now.
func ParseHint(r io.Reader, now time.Time) (Hint, error) {
	dec := json.NewDecoder(io.LimitReader(r, 64<<10))
	dec.DisallowUnknownFields()
	var h Hint
	if err := dec.Decode(&h); err != nil {
		return Hint{}, fmt.Errorf("%w: hint: %v", ErrBadEvent, err)
	}
	if err := h.normalize(now); err != nil {
		return Hint{}, fmt.Errorf("%w: hint: %v", ErrBadEvent, err)
	}
	return h, nil
}

func (h *Hint) normalize(now time.Time) error {
	if err := checkFunction(h.Function); err != nil {
		return err
	}
	if _, err := name.ParseReference(h.Image); err != nil {
		return fmt.Errorf("image %q: %v", h.Image, err)
	}
	if h.At.IsZero() {
		h.At = now
	}
	h.At = h.At.UTC()
	if h.For == 0 {
		h.For = 10 * time.Minute
	}
	switch {
	case h.Rate < 0 || h.Rate > MaxCount:
		return fmt.Errorf("rate %d: want 0 to %d per minute", h.Rate, MaxCount)
	case h.For < time.Minute || h.For > MaxHintFor:
		return fmt.Errorf("for %s: want a minute to %s", h.For, MaxHintFor)
	case h.At.Add(h.For).Before(now):
		return fmt.Errorf("at %s: the hint would be over already", h.At.Format(time.RFC3339))
	case h.At.After(now.Add(MaxHintAhead)):
		return fmt.Errorf("at %s: more than %s ahead", h.At.Format(time.RFC3339), MaxHintAhead)
	}
	return nil
}
