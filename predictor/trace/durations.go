package trace

import (
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"maps"
	"math"
	"slices"
	"strconv"
	"strings"
)

// Duration is one row of a durations file: a function's execution times in
// milliseconds.
type Duration struct {
	Owner, App, Function string
	// Average execution time, ms.
	Average float64
	// Count of executions the statistics are over; 0 when not given.
	Count int64
	// Minimum and Maximum execution time, ms; 0 when not given.
	Minimum, Maximum float64
	// Percentiles of execution time, ms, by percentile (0, 1, 25, 50, 75,
	// 99, 100 in the Azure files); nil when none are given.
	Percentiles map[int]float64
}

// Durations are the execution times of a trace's functions.
type Durations struct {
	byKey map[[2]string]Duration
}

// Len is the number of functions with a duration.
func (d *Durations) Len() int {
	if d == nil {
		return 0
	}
	return len(d.byKey)
}

// Lookup returns the durations of app's function fn. A file without a
// HashApp column matches fn in any app.
func (d *Durations) Lookup(app, fn string) (Duration, bool) {
	if d == nil {
		return Duration{}, false
	}
	if v, ok := d.byKey[[2]string{app, fn}]; ok {
		return v, true
	}
	v, ok := d.byKey[[2]string{"", fn}]
	return v, ok
}

const durationsSchema = "HashOwner,HashApp,HashFunction,Average,Count,Minimum,Maximum,percentile_Average_N..."

// LoadDurations reads a durations file (see ReadDurations).
func LoadDurations(path string) (*Durations, error) {
	return load(path, "durations", ReadDurations)
}

// ReadDurations reads execution times in the schema of the Azure Functions
// Trace 2019 (function_durations_percentiles.anon.dNN.csv): columns found by
// header name, HashFunction and Average required; HashOwner, HashApp,
// Count, Minimum, Maximum and percentile_Average_N read when present; other
// columns ignored. Times are in milliseconds and must be finite and
// non-negative. name is used in errors.
func ReadDurations(r io.Reader, name string) (*Durations, error) {
	cr, header, err := readHeader(r, name, durationsSchema)
	if err != nil {
		return nil, err
	}
	cols := map[string]int{}
	pcts := map[int]int{} // percentile -> field index
	for i, h := range header {
		if rest, ok := strings.CutPrefix(h, "percentile_Average_"); ok {
			p, err := strconv.Atoi(rest)
			if err != nil || p < 0 || p > 100 {
				return nil, &ParseError{File: name, Line: 1, Column: i + 1, Name: h, Err: fmt.Errorf("%w: percentile column %q: want percentile_Average_N with N from 0 to 100", ErrSchema, h)}
			}
			if _, dup := pcts[p]; dup {
				return nil, &ParseError{File: name, Line: 1, Column: i + 1, Name: h, Err: fmt.Errorf("%w: column %s appears twice", ErrSchema, h)}
			}
			pcts[p] = i
			continue
		}
		switch h {
		case "HashOwner", "HashApp", "HashFunction", "Average", "Count", "Minimum", "Maximum":
			if _, dup := cols[h]; dup {
				return nil, &ParseError{File: name, Line: 1, Column: i + 1, Name: h, Err: fmt.Errorf("%w: column %s appears twice", ErrSchema, h)}
			}
			cols[h] = i
		}
	}
	for _, c := range []string{"HashFunction", "Average"} {
		if _, ok := cols[c]; !ok {
			return nil, &ParseError{File: name, Line: 1, Err: fmt.Errorf("%w: no %s column; want %s", ErrSchema, c, durationsSchema)}
		}
	}
	d := &Durations{byKey: map[[2]string]Duration{}}
	pctOrder := slices.Sorted(maps.Keys(pcts))
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
		bad := func(col int, format string, args ...any) error {
			return &ParseError{File: name, Line: line, Column: col + 1, Name: header[col], Err: fmt.Errorf("%w: "+format, append([]any{ErrValue}, args...)...)}
		}
		str := func(c string) string {
			if i, ok := cols[c]; ok {
				return strings.TrimSpace(rec[i])
			}
			return ""
		}
		ms := func(i int) (float64, error) {
			s := strings.TrimSpace(rec[i])
			v, err := strconv.ParseFloat(s, 64)
			if err != nil || v < 0 || math.IsInf(v, 0) || math.IsNaN(v) {
				return 0, bad(i, "%q: want a non-negative number of milliseconds", s)
			}
			return v, nil
		}
		v := Duration{Owner: str("HashOwner"), App: str("HashApp"), Function: str("HashFunction")}
		if v.Function == "" {
			return nil, bad(cols["HashFunction"], "HashFunction is empty")
		}
		if v.Average, err = ms(cols["Average"]); err != nil {
			return nil, err
		}
		for _, f := range []struct {
			col string
			dst *float64
		}{{"Minimum", &v.Minimum}, {"Maximum", &v.Maximum}} {
			c, dst := f.col, f.dst
			if i, ok := cols[c]; ok {
				if *dst, err = ms(i); err != nil {
					return nil, err
				}
			}
		}
		if i, ok := cols["Count"]; ok {
			s := strings.TrimSpace(rec[i])
			n, err := strconv.ParseInt(s, 10, 64)
			if err != nil || n < 0 {
				return nil, bad(i, "count %q: want a non-negative integer", s)
			}
			v.Count = n
		}
		if len(pcts) > 0 {
			v.Percentiles = make(map[int]float64, len(pcts))
			for _, p := range pctOrder {
				if v.Percentiles[p], err = ms(pcts[p]); err != nil {
					return nil, err
				}
			}
		}
		d.byKey[[2]string{v.App, v.Function}] = v
	}
	return d, nil
}
