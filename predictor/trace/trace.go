package trace

import (
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// Errors of this package, wrapped by every ParseError; callers test them with
// errors.Is.
var (
	// ErrSchema: the header does not follow the expected schema (a missing,
	// duplicated or unknown column, minute columns out of order).
	ErrSchema = errors.New("unexpected trace schema")
	// ErrSyntax: the file is not well-formed CSV (a bad quote, a row with
	// the wrong number of fields).
	ErrSyntax = errors.New("malformed CSV")
	// ErrValue: a cell does not hold what its column needs (a negative or
	// non-integer count, an empty identifier).
	ErrValue = errors.New("bad value")
)

// ParseError locates a problem in a trace file.
type ParseError struct {
	File string
	// Line is the 1-based line of the file; 0 when the problem is the file
	// as a whole.
	Line int
	// Column is the 1-based field number in the row, 0 when the problem is
	// not one field's; Name is that column's header.
	Column int
	Name   string
	// Err wraps ErrSchema, ErrSyntax or ErrValue, or the reader's error.
	Err error
}

func (e *ParseError) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Line > 0 {
		fmt.Fprintf(&b, ": line %d", e.Line)
	}
	if e.Column > 0 {
		fmt.Fprintf(&b, ", column %d", e.Column)
		if e.Name != "" {
			fmt.Fprintf(&b, " (%q)", e.Name)
		}
	}
	b.WriteString(": ")
	b.WriteString(e.Err.Error())
	return b.String()
}

func (e *ParseError) Unwrap() error { return e.Err }

// Function is one row of an invocations file.
type Function struct {
	Owner, App, Function string
	// Trigger is the function's trigger type (http, timer, queue, ...), empty
	// when the file has no Trigger column.
	Trigger string
	// Counts are the invocations that started in each minute: Counts[i] in
	// minute FirstMinute+i of the day.
	Counts []uint32
}

// Invocations is a per-minute invocation trace.
type Invocations struct {
	// FirstMinute is the number of the first minute column (480 for an
	// excerpt starting at 08:00 of a 0-based day, 1 for a whole day of the
	// original dataset, whose columns run 1 to 1440).
	FirstMinute int
	// Minutes is the number of minute columns.
	Minutes   int
	Functions []Function
}

// Invocations schema: identifying columns by name, in any order, then the
// minute columns.
const (
	colOwner    = "HashOwner"
	colApp      = "HashApp"
	colFunction = "HashFunction"
	colTrigger  = "Trigger"
)

const invocationsSchema = "HashOwner,HashApp,HashFunction,Trigger, then one column per minute named by its number (1,2,...) or minute_N"

// LoadInvocations reads an invocations file (see ReadInvocations).
func LoadInvocations(path string) (*Invocations, error) {
	return load(path, "trace", ReadInvocations)
}

// ReadInvocations reads a per-minute invocation trace in the schema of the
// Azure Functions Trace 2019 (invocations_per_function_md.anon.dNN.csv): a
// header naming HashApp and HashFunction (required), HashOwner and Trigger
// (optional) in any order, and the minute columns, named by number ("480")
// or "minute_480", consecutive and ascending; a whole day (1440 columns) or
// an excerpt. Then one row per function with a non-negative integer count
// per minute. A column with an empty header (a pandas index) is ignored.
// name is used in errors.
func ReadInvocations(r io.Reader, name string) (*Invocations, error) {
	cr, header, err := readHeader(r, name, invocationsSchema)
	if err != nil {
		return nil, err
	}
	cols := map[string]int{}
	var minuteCols []int // field index of each minute column, in order
	inv := &Invocations{}
	for i, h := range header {
		switch h {
		case "":
			continue
		case colOwner, colApp, colFunction, colTrigger:
			if _, dup := cols[h]; dup {
				return nil, &ParseError{File: name, Line: 1, Column: i + 1, Name: h, Err: fmt.Errorf("%w: column %s appears twice", ErrSchema, h)}
			}
			cols[h] = i
			continue
		}
		m, ok := minuteNumber(h)
		if !ok {
			return nil, &ParseError{File: name, Line: 1, Column: i + 1, Name: h, Err: fmt.Errorf("%w: unknown column %q; want %s", ErrSchema, h, invocationsSchema)}
		}
		if len(minuteCols) == 0 {
			inv.FirstMinute = m
		} else if want := inv.FirstMinute + len(minuteCols); m != want {
			return nil, &ParseError{File: name, Line: 1, Column: i + 1, Name: h, Err: fmt.Errorf("%w: minute %d where minute %d was expected; minute columns must be consecutive and ascending", ErrSchema, m, want)}
		}
		minuteCols = append(minuteCols, i)
	}
	for _, c := range []string{colApp, colFunction} {
		if _, ok := cols[c]; !ok {
			return nil, &ParseError{File: name, Line: 1, Err: fmt.Errorf("%w: no %s column; want %s", ErrSchema, c, invocationsSchema)}
		}
	}
	if len(minuteCols) == 0 {
		return nil, &ParseError{File: name, Line: 1, Err: fmt.Errorf("%w: no minute columns; want %s", ErrSchema, invocationsSchema)}
	}
	inv.Minutes = len(minuteCols)
	get := func(rec []string, col string) string {
		if i, ok := cols[col]; ok {
			return strings.TrimSpace(rec[i])
		}
		return ""
	}
	for {
		rec, err := cr.Read()
		if err == io.EOF {
			break
		}
		if errors.Is(err, csv.ErrFieldCount) {
			line, _ := cr.FieldPos(0)
			return nil, &ParseError{File: name, Line: line, Err: fmt.Errorf("%w: %d fields where the header has %d", ErrSyntax, len(rec), len(header))}
		}
		if err != nil {
			return nil, csvError(name, err)
		}
		line, _ := cr.FieldPos(0)
		fn := Function{
			Owner:    get(rec, colOwner),
			App:      get(rec, colApp),
			Function: get(rec, colFunction),
			Trigger:  get(rec, colTrigger),
			Counts:   make([]uint32, len(minuteCols)),
		}
		for _, c := range []string{colApp, colFunction} {
			if get(rec, c) == "" {
				i := cols[c]
				return nil, &ParseError{File: name, Line: line, Column: i + 1, Name: c, Err: fmt.Errorf("%w: %s is empty", ErrValue, c)}
			}
		}
		for k, i := range minuteCols {
			n, err := parseCount(rec[i])
			if err != nil {
				return nil, &ParseError{File: name, Line: line, Column: i + 1, Name: strings.TrimSpace(header[i]), Err: fmt.Errorf("%w: count %q: %v", ErrValue, rec[i], err)}
			}
			fn.Counts[k] = n
		}
		inv.Functions = append(inv.Functions, fn)
	}
	return inv, nil
}

// minuteNumber parses a minute column's name: "480" or "minute_480".
func minuteNumber(h string) (int, bool) {
	s := h
	if rest, ok := strings.CutPrefix(strings.ToLower(h), "minute_"); ok {
		s = rest
	}
	if s == "" || s[0] < '0' || s[0] > '9' {
		return 0, false
	}
	m, err := strconv.Atoi(s)
	if err != nil || m > 1<<20 {
		return 0, false
	}
	return m, true
}

// parseCount parses a non-negative integer count. "12.0", as pandas writes
// integers that went through floats, is accepted.
func parseCount(s string) (uint32, error) {
	s = strings.TrimSpace(s)
	if n, err := strconv.ParseUint(s, 10, 32); err == nil {
		return uint32(n), nil
	}
	if f, err := strconv.ParseFloat(s, 64); err == nil && f >= 0 && f <= math.MaxUint32 && f == math.Trunc(f) {
		return uint32(f), nil
	}
	return 0, errors.New("want a non-negative integer below 2^32")
}

// csvError turns encoding/csv's error into a ParseError.
// readHeader starts reading a CSV file: it returns the reader (records
// reused, so callers copy what they keep) and the header, trimmed of
// spaces and a byte-order mark. An empty file is an ErrSchema naming schema.
func readHeader(r io.Reader, name, schema string) (*csv.Reader, []string, error) {
	cr := csv.NewReader(r)
	cr.ReuseRecord = true
	header, err := cr.Read()
	if err == io.EOF {
		return nil, nil, &ParseError{File: name, Err: fmt.Errorf("%w: the file is empty; want a header line: %s", ErrSchema, schema)}
	}
	if err != nil {
		return nil, nil, csvError(name, err)
	}
	header = slices.Clone(header) // ReuseRecord: the next Read overwrites it
	for i, h := range header {
		header[i] = strings.TrimSpace(strings.TrimPrefix(h, "\ufeff"))
	}
	return cr, header, nil
}

// load opens path and reads it with read; what names the file's kind in
// errors.
func load[T any](path, what string, read func(io.Reader, string) (T, error)) (T, error) {
	f, err := os.Open(path)
	if err != nil {
		var zero T
		return zero, fmt.Errorf("open %s: %w", what, err)
	}
	defer f.Close()
	return read(f, filepath.Base(path))
}

func csvError(name string, err error) error {
	var pe *csv.ParseError
	if errors.As(err, &pe) {
		return &ParseError{File: name, Line: pe.Line, Err: fmt.Errorf("%w: %v", ErrSyntax, pe.Err)}
	}
	return &ParseError{File: name, Err: fmt.Errorf("read: %w", err)}
}
