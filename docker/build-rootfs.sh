#!/usr/bin/env bash
# Builds a root filesystem tarball with python3 from Debian packages (debootstrap), for machines
# that cannot pull from a container registry. `beephost init --rootfs OUT` imports it.
#
# usage: docker/build-rootfs.sh OUT.tar [SUITE] [MIRROR]
#   SUITE   Debian suite (default: bookworm; keep it no newer than the host's glibc allows
#           for the agent binary, see ARCHITECTURE.md)
#   MIRROR  Debian mirror (default: the first deb.debian.org-style URI in apt's sources, else
#           http://deb.debian.org/debian)
# Needs root and debootstrap (installed with apt-get when missing).
set -euo pipefail

out=${1:?usage: build-rootfs.sh OUT.tar [SUITE] [MIRROR]}
suite=${2:-bookworm}
mirror=${3:-http://deb.debian.org/debian}
packages=python3,python3-venv,python3-pip,ca-certificates

if [ "$(id -u)" -ne 0 ]; then
  echo "error: build-rootfs.sh needs root (debootstrap creates device nodes and chroots)" >&2
  exit 1
fi
if ! command -v debootstrap >/dev/null 2>&1; then
  echo "installing debootstrap" >&2
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/beephost-rootfs.XXXXXX")
trap 'rm -rf "$work"' EXIT

echo "debootstrap $suite ($packages) from $mirror" >&2
debootstrap --variant=minbase --include="$packages" "$suite" "$work/root" "$mirror" >"$work/log" 2>&1 || {
  tail -n 30 "$work/log" >&2
  echo "error: debootstrap failed (log above)" >&2
  exit 1
}

# Make the filesystem small and deterministic enough to cache: no apt lists, no caches, no docs.
rm -rf "$work/root/var/lib/apt/lists/"* "$work/root/var/cache/apt/"*.bin \
  "$work/root/var/cache/apt/archives/"*.deb "$work/root/usr/share/doc" \
  "$work/root/usr/share/man" "$work/root/usr/share/locale" "$work/root/var/log/"*
"$work/root/usr/bin/python3" -c 'import sys, venv; print(sys.version)' >&2 ||
  chroot "$work/root" python3 -c 'import sys, venv; print(sys.version)' >&2

tmp_out="$out.partial.$$"
tar --numeric-owner -C "$work/root" -cf "$tmp_out" .
mv -f "$tmp_out" "$out"
echo "wrote $out ($(du -h "$out" | cut -f1))" >&2
