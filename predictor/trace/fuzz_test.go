package trace_test

import (
	"bytes"
	"errors"
	"testing"

	"github.com/thaw-dev/thaw/predictor/trace"
)

// FuzzReadInvocations: any input either loads into a consistent trace or
// fails with a *ParseError of one of the package's kinds, never a panic.
func FuzzReadInvocations(f *testing.F) {
	for _, seed := range []string{
		"HashOwner,HashApp,HashFunction,Trigger,480,481\no,a,f,http,1,0\n",
		"HashApp,HashFunction,minute_1,minute_2\na,f,3,4\n",
		",HashApp,HashFunction,7\n0,a,f,2.0\n",
		"HashApp,HashFunction,1,2\na,f,1\n",
		"HashApp,HashFunction,1\na,f,\"1\n",
		"HashApp,HashFunction,2,1\n",
		"HashApp,HashApp\n",
		"",
		"\ufeffHashApp,HashFunction,1\r\na,f,4294967295\r\n",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		inv, err := trace.ReadInvocations(bytes.NewReader(data), "fuzz.csv")
		if err != nil {
			var pe *trace.ParseError
			if !errors.As(err, &pe) || pe.File != "fuzz.csv" {
				t.Fatalf("%v: not a ParseError naming the file", err)
			}
			if !errors.Is(err, trace.ErrSchema) && !errors.Is(err, trace.ErrSyntax) && !errors.Is(err, trace.ErrValue) {
				t.Fatalf("%v: of no known kind", err)
			}
			return
		}
		if inv.Minutes < 1 {
			t.Fatalf("loaded a trace without minutes")
		}
		for _, fn := range inv.Functions {
			if len(fn.Counts) != inv.Minutes || fn.App == "" || fn.Function == "" {
				t.Fatalf("inconsistent function %+v in a trace of %d minutes", fn, inv.Minutes)
			}
		}
	})
}

// FuzzReadDurations: the same for durations files.
func FuzzReadDurations(f *testing.F) {
	for _, seed := range []string{
		"HashOwner,HashApp,HashFunction,Average,Count,Minimum,Maximum,percentile_Average_0,percentile_Average_100\no,a,f,3,137430,0.0,6664.0,0,492\n",
		"HashFunction,Average\nf,5\n",
		"HashFunction,Average,percentile_Average_101\n",
		"HashFunction,Average\nf,-5\n",
		"HashFunction,Average\nf,1e400\n",
		"",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		d, err := trace.ReadDurations(bytes.NewReader(data), "fuzz.csv")
		if err != nil {
			var pe *trace.ParseError
			if !errors.As(err, &pe) || pe.File != "fuzz.csv" {
				t.Fatalf("%v: not a ParseError naming the file", err)
			}
			return
		}
		if d.Len() < 0 {
			t.Fatal("negative length")
		}
	})
}
