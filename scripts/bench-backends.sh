#!/usr/bin/env bash
# Benchmarks backends (issue 5) against the real engine and writes the results into
# BENCHMARKS.md. Needs a rootfs: BEEPHOST_TEST_ROOTFS, or the one scripts/test caches.
# Usage: scripts/bench-backends.sh [--starts N] [--calls N] [--concurrent N] [--rootfs FILE]
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${BEEPHOST_TEST_ROOTFS:-}" ]; then
  cache=${BEEPHOST_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/beephost}
  key=$(sha256sum docker/build-rootfs.sh | cut -c1-16)
  export BEEPHOST_TEST_ROOTFS="$cache/rootfs-$key.tar"
  [ -s "$BEEPHOST_TEST_ROOTFS" ] || docker/build-rootfs.sh "$BEEPHOST_TEST_ROOTFS"
fi
exec cargo bench --bench backends -- --write "$@"
