// Package trace loads recorded per-minute invocation traces for replay: the
// invocations and function durations files of the Azure Functions Trace 2019
// (Shahrad et al., "Serverless in the Wild", USENIX ATC 2020) and excerpts
// of it, such as the vHive invitro samples.
//
// Columns are found by header name, so any day of the dataset, a whole day
// (minute columns 1 to 1440) or an excerpt (480 to 959), loads as it is.
// Every problem is a *ParseError naming the file, the line and, where it
// applies, the column.
//
// The package only reads files; what a replay makes of them (apps, images,
// instances) is predictor/sim's.
package trace
