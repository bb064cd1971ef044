// Package e2e holds thaw's end-to-end tests: real services, no mocks.
//
// Each test starts its own docker-registry (CNCF distribution), containerd
// 1.6 with runc, and a thaw daemon built from ./cmd/thaw, on free loopback
// ports in temporary directories, pushes a small runnable image with
// go-containerregistry, and drives containerd with ctr through a hosts.toml
// mirror configuration — the same files deploy/containerd documents.
//
// The tests need root and the Debian packages that integration/e2e-deps.sh
// installs. They are behind the e2e build tag so that unit test runs do not
// start daemons:
//
//	sudo integration/e2e-deps.sh
//	go test -tags e2e -count=1 -v -timeout 40m ./integration/e2e/
//
// THAW_E2E_BIN, if set, is a thaw binary to test instead of building one.
// THAW_E2E_LOGS=1 prints the tail of every service's log, not only when a
// test fails.
//
// The package owns starting and stopping those services and the assertions
// on what crossed which process boundary; it does not test thaw's packages
// one by one (their own tests do).
package e2e
