#!/usr/bin/env bash
# Installs what thaw's end-to-end tests (integration/e2e, integration/cluster)
# run: containerd (with ctr and the runc v2 shim), runc and docker-registry,
# for the multi-node harness iproute2 (ip, tc), util-linux (nsenter) and
# iptables, and for lazy loading (integration/lazy) fuse3, from Debian's
# packages. Idempotent: installs only what is missing, and does nothing
# (not even apt-get update) when everything is there.
#
# The tests start their own containerd and registry; they do not use the
# services these packages may start under systemd, and need no systemd (a CI
# container has none).
#
#   sudo integration/e2e-deps.sh
#   sudo go test -tags e2e -count=1 -v -timeout 40m ./integration/...
set -euo pipefail

die() {
	echo "e2e-deps.sh: $*" >&2
	exit 1
}

[ "$(id -u)" -eq 0 ] || die "must run as root: it installs Debian packages (sudo $0)"
command -v apt-get >/dev/null && command -v dpkg-query >/dev/null ||
	die "needs a Debian-based system with apt-get; install containerd (1.6 or later, with ctr), runc and docker-registry (CNCF distribution v2) yourself"

packages=(containerd runc docker-registry iproute2 util-linux iptables fuse3)

installed() {
	[ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true)" = "install ok installed" ]
}

missing=()
for p in "${packages[@]}"; do
	installed "$p" || missing+=("$p")
done

if [ "${#missing[@]}" -gt 0 ]; then
	echo "e2e-deps.sh: installing ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -q || die "apt-get update failed; check the machine's Debian package mirror"
	apt-get install -y -q "${missing[@]}" || die "apt-get install ${missing[*]} failed"
fi

# The programs the tests run, from whichever package provides them.
for bin in containerd ctr containerd-shim-runc-v2 runc docker-registry ip tc nsenter iptables fusermount3; do
	command -v "$bin" >/dev/null || die "$bin is not on PATH after installing ${packages[*]}"
done

# The stargz snapshotter mounts through /dev/fuse; load the module if the
# device is missing (a container may not allow it, then the tests say so).
[ -e /dev/fuse ] || modprobe fuse 2>/dev/null || true
[ -e /dev/fuse ] || die "/dev/fuse is missing and modprobe fuse did not create it; the lazy loading tests need FUSE"

echo "e2e-deps.sh: ready: $(containerd --version | awk '{print $1, $3}'), $(runc --version | head -n1), docker-registry $(docker-registry --version | awk '{print $NF}')"
