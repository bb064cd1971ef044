// Package storetest is the conformance suite of store.ContentStore: every
// implementation runs [Run] in its tests. It also has small helpers to put
// blobs into a store in tests of other packages.
//
// It owns no implementation and is imported only by tests.
package storetest
