package trace_test

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.uber.org/goleak"

	"github.com/thaw-dev/thaw/predictor/trace"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// shared is the 8-hour trace every session shares; tests that need it skip
// when it is not there.
const shared = "../../../shared/data/traces/azure2019-500fn-8h"

func TestLoadSharedTrace(t *testing.T) {
	path := filepath.Join(shared, "invocations.csv")
	if _, err := os.Stat(path); err != nil {
		t.Skipf("shared trace not here: %v", err)
	}
	inv, err := trace.LoadInvocations(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(inv.Functions) != 500 || inv.Minutes != 480 || inv.FirstMinute != 480 {
		t.Fatalf("got %d functions, %d minutes from %d; want 500, 480 from 480", len(inv.Functions), inv.Minutes, inv.FirstMinute)
	}
	var total uint64
	triggers := map[string]int{}
	for _, f := range inv.Functions {
		triggers[f.Trigger]++
		for _, c := range f.Counts {
			total += uint64(c)
		}
	}
	// The figures of the trace's README.
	if total != 3037902 {
		t.Errorf("invocations: got %d, want 3037902", total)
	}
	if triggers["timer"] != 247 || triggers["http"] != 139 {
		t.Errorf("triggers: got %v, want timer 247, http 139", triggers)
	}

	d, err := trace.LoadDurations(filepath.Join(shared, "durations.csv"))
	if err != nil {
		t.Fatal(err)
	}
	missing := 0
	for _, f := range inv.Functions {
		if _, ok := d.Lookup(f.App, f.Function); !ok {
			missing++
		}
	}
	if d.Len() != 500 || missing != 0 {
		t.Errorf("durations: %d rows, %d functions without one; want 500 and 0", d.Len(), missing)
	}
}

// day writes a whole-day invocations file as the original dataset has it:
// minute columns 1 to 1440.
func day(rows int) string {
	var b strings.Builder
	b.WriteString("HashOwner,HashApp,HashFunction,Trigger")
	for m := 1; m <= 1440; m++ {
		fmt.Fprintf(&b, ",%d", m)
	}
	b.WriteString("\n")
	for r := range rows {
		fmt.Fprintf(&b, "o,a%d,f%d,timer", r%3, r)
		for m := 1; m <= 1440; m++ {
			if m%60 == r%60 {
				b.WriteString(",1")
			} else {
				b.WriteString(",0")
			}
		}
		b.WriteString("\n")
	}
	return b.String()
}

func TestReadInvocations(t *testing.T) {
	for _, tc := range []struct {
		name, in     string
		first, mins  int
		funcs        int
		app, trigger string
		counts       []uint32
	}{
		{"excerpt", "HashOwner,HashApp,HashFunction,Trigger,480,481,482\no,a,f,http,1,0,12\n", 480, 3, 1, "a", "http", []uint32{1, 0, 12}},
		{"minute_N", "HashApp,HashFunction,minute_1,minute_2\na,f,3,4\n", 1, 2, 1, "a", "", []uint32{3, 4}},
		{"columns in any order", "Trigger,0,1,HashFunction,HashApp\nqueue,5,6,f,a\n", 0, 2, 1, "a", "queue", []uint32{5, 6}},
		{"pandas index and floats", ",HashApp,HashFunction,7\n0,a,f,2.0\n", 7, 1, 1, "a", "", []uint32{2}},
		{"byte order mark and spaces", "\ufeffHashApp, HashFunction ,10\n a , f , 3 \n", 10, 1, 1, "a", "", []uint32{3}},
		{"no rows", "HashApp,HashFunction,1\n", 1, 1, 0, "", "", nil},
		{"whole day", day(5), 1, 1440, 5, "a0", "timer", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			inv, err := trace.ReadInvocations(strings.NewReader(tc.in), "t.csv")
			if err != nil {
				t.Fatal(err)
			}
			if inv.FirstMinute != tc.first || inv.Minutes != tc.mins || len(inv.Functions) != tc.funcs {
				t.Fatalf("got first %d, %d minutes, %d functions; want %d, %d, %d", inv.FirstMinute, inv.Minutes, len(inv.Functions), tc.first, tc.mins, tc.funcs)
			}
			if tc.funcs == 0 {
				return
			}
			f := inv.Functions[0]
			if f.App != tc.app || f.Trigger != tc.trigger || len(f.Counts) != tc.mins {
				t.Errorf("got %+v", f)
			}
			if tc.counts != nil && fmt.Sprint(f.Counts) != fmt.Sprint(tc.counts) {
				t.Errorf("counts %v, want %v", f.Counts, tc.counts)
			}
		})
	}
}

func TestReadInvocationsErrors(t *testing.T) {
	const head = "HashOwner,HashApp,HashFunction,Trigger,480,481\n"
	for _, tc := range []struct {
		name, in     string
		kind         error
		line, column int
		says         string
	}{
		{"empty", "", trace.ErrSchema, 0, 0, "empty"},
		{"no HashApp", "HashFunction,1\nf,1\n", trace.ErrSchema, 1, 0, "no HashApp column"},
		{"no minutes", "HashApp,HashFunction\na,f\n", trace.ErrSchema, 1, 0, "no minute columns"},
		{"unknown column", "HashApp,HashFunction,Region,1\n", trace.ErrSchema, 1, 3, `unknown column "Region"`},
		{"duplicate column", "HashApp,HashApp,HashFunction,1\n", trace.ErrSchema, 1, 2, "appears twice"},
		{"gap in minutes", "HashApp,HashFunction,1,2,4\n", trace.ErrSchema, 1, 5, "minute 4 where minute 3"},
		{"descending minutes", "HashApp,HashFunction,2,1\n", trace.ErrSchema, 1, 4, "minute 1 where minute 3"},
		{"bad count", head + "o,a,f,http,1,2\no,a,g,http,1,x\n", trace.ErrValue, 3, 6, `count "x"`},
		{"negative count", head + "o,a,f,http,-1,2\n", trace.ErrValue, 2, 5, `count "-1"`},
		{"fractional count", head + "o,a,f,http,1.5,2\n", trace.ErrValue, 2, 5, `count "1.5"`},
		{"huge count", head + "o,a,f,http,1,99999999999\n", trace.ErrValue, 2, 6, "below 2^32"},
		{"empty function", head + "o,a,,http,1,2\n", trace.ErrValue, 2, 3, "HashFunction is empty"},
		{"short row", head + "o,a,f,http,1,2\no,a,f,http,1\n", trace.ErrSyntax, 3, 0, "5 fields where the header has 6"},
		{"bad quote", head + "o,a,f\"x,http,1,2\n", trace.ErrSyntax, 2, 0, "quote"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := trace.ReadInvocations(strings.NewReader(tc.in), "inv.csv")
			checkParseError(t, err, tc.kind, tc.line, tc.column, tc.says)
		})
	}
}

func checkParseError(t *testing.T, err error, kind error, line, column int, says string) {
	t.Helper()
	if !errors.Is(err, kind) {
		t.Fatalf("got %v, want %v", err, kind)
	}
	var pe *trace.ParseError
	if !errors.As(err, &pe) {
		t.Fatalf("%v is not a *ParseError", err)
	}
	if pe.Line != line || pe.Column != column {
		t.Errorf("%v: at line %d column %d, want line %d column %d", err, pe.Line, pe.Column, line, column)
	}
	msg := err.Error()
	if !strings.HasPrefix(msg, pe.File+":") || !strings.Contains(msg, says) {
		t.Errorf("message %q: want the file name first and %q", msg, says)
	}
	if line > 0 && !strings.Contains(msg, fmt.Sprintf("line %d", line)) {
		t.Errorf("message %q does not name line %d", msg, line)
	}
}

func TestReadDurations(t *testing.T) {
	in := "HashOwner,HashApp,HashFunction,Average,Count,Minimum,Maximum,percentile_Average_0,percentile_Average_50,percentile_Average_100,Extra\n" +
		"o,a,f,120.5,10,3,900,3,100,900,ignored\n" +
		"o,b,f,7,1,7,7,7,7,7,\n"
	d, err := trace.ReadDurations(strings.NewReader(in), "d.csv")
	if err != nil {
		t.Fatal(err)
	}
	v, ok := d.Lookup("a", "f")
	if !ok || v.Average != 120.5 || v.Count != 10 || v.Maximum != 900 || v.Percentiles[50] != 100 {
		t.Errorf("a/f: %+v, %v", v, ok)
	}
	if v, ok := d.Lookup("b", "f"); !ok || v.Average != 7 {
		t.Errorf("b/f: %+v, %v", v, ok)
	}
	if _, ok := d.Lookup("c", "f"); ok {
		t.Error("c/f found")
	}
	// Without HashApp, a function matches in any app.
	d, err = trace.ReadDurations(strings.NewReader("HashFunction,Average\nf,5\n"), "d.csv")
	if err != nil {
		t.Fatal(err)
	}
	if v, ok := d.Lookup("any", "f"); !ok || v.Average != 5 {
		t.Errorf("any/f: %+v, %v", v, ok)
	}
	var nilD *trace.Durations
	if _, ok := nilD.Lookup("a", "f"); ok || nilD.Len() != 0 {
		t.Error("nil durations found something")
	}
}

func TestReadDurationsErrors(t *testing.T) {
	const head = "HashApp,HashFunction,Average,Count,percentile_Average_99\n"
	for _, tc := range []struct {
		name, in     string
		kind         error
		line, column int
		says         string
	}{
		{"empty", "", trace.ErrSchema, 0, 0, "empty"},
		{"no Average", "HashApp,HashFunction\n", trace.ErrSchema, 1, 0, "no Average column"},
		{"bad percentile", "HashFunction,Average,percentile_Average_x\n", trace.ErrSchema, 1, 3, "percentile_Average_N"},
		{"negative average", head + "a,f,-1,1,2\n", trace.ErrValue, 2, 3, "non-negative number of milliseconds"},
		{"NaN percentile", head + "a,f,1,1,NaN\n", trace.ErrValue, 2, 5, "milliseconds"},
		{"bad count", head + "a,f,1,1.5,2\na,g,1,x,2\n", trace.ErrValue, 2, 4, "count"},
		{"empty function", head + "a,,1,1,2\n", trace.ErrValue, 2, 2, "HashFunction is empty"},
		{"long row", head + "a,f,1,1,2,3\n", trace.ErrSyntax, 2, 0, "6 fields where the header has 5"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := trace.ReadDurations(strings.NewReader(tc.in), "dur.csv")
			checkParseError(t, err, tc.kind, tc.line, tc.column, tc.says)
		})
	}
}

func TestLoadMissingFile(t *testing.T) {
	if _, err := trace.LoadInvocations(filepath.Join(t.TempDir(), "nope.csv")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("got %v, want a not-exist error", err)
	}
	if _, err := trace.LoadDurations(filepath.Join(t.TempDir(), "nope.csv")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("got %v, want a not-exist error", err)
	}
}
