#!/usr/bin/env bash
# ./dev setup step: the SSH lab's node root filesystem and its offline package pool.
#
# One Debian bookworm root filesystem (mmdebstrap, variant apt) shared read-only
# by every lab node through a per-node overlay, and the .deb files node_prep
# installs (containerd and its dependencies, nftables for the gateway), fetched
# once with the root filesystem's own apt so dependencies resolve against what
# a node really has. The lab serves that pool as a local apt repository: lab
# nodes have no route to any registry, like a private network without internet.
# Cached under $CACHE/lab/<suite>-<key>; the key changes when the suite or the
# package lists change. Prints one line: "skipped: ..." or what it built
# (dev-setup.sh collects it); with --dest it only prints the cache folder.
set -euo pipefail

CACHE="${CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/datacloud}"
SUITE=bookworm
INCLUDE=openssh-server,iproute2,python3,kmod,procps,util-linux,sudo,ca-certificates,nftables
POOL_PACKAGES=(containerd runc mount conntrack socat ethtool ebtables nftables iptables apt-transport-https gpg curl)

key=$(printf '%s|%s|%s|v1' "$SUITE" "$INCLUDE" "${POOL_PACKAGES[*]}" | sha256sum | cut -c1-12)
dest="$CACHE/lab/$SUITE-$key"
if [ "${1:-}" = "--dest" ]; then
  echo "$dest"
  exit 0
fi
if [ -f "$dest/.done" ]; then
  echo "skipped: lab root filesystem $SUITE ($dest)"
  exit 0
fi
[ "$(id -u)" -eq 0 ] || { echo "lab root filesystem needs root (mmdebstrap into a directory)" >&2; exit 1; }
command -v mmdebstrap >/dev/null || { echo "mmdebstrap is missing (apt-get install mmdebstrap)" >&2; exit 1; }

tmp="$dest.tmp.$$"
rm -rf "$tmp"
mkdir -p "$tmp/pool"
trap 'rm -rf "$tmp"' EXIT
# The customize hook runs inside the fresh tree while it still has the
# mirror configured: download (not install) the pool packages, copy them out,
# then drop the mirror so the tree itself holds no registry configuration.
hook_pool="chroot \"\$1\" apt-get install -y -q --download-only --no-install-recommends ${POOL_PACKAGES[*]} >/dev/null \
 && cp \"\$1\"/var/cache/apt/archives/*.deb '$tmp/pool/'"
hook_clean="rm -f \"\$1\"/etc/apt/sources.list \"\$1\"/var/lib/apt/lists/*_Packages \"\$1\"/var/lib/apt/lists/*_Release \"\$1\"/var/lib/apt/lists/*_InRelease; rm -f \"\$1\"/etc/ssh/ssh_host_*"
mmdebstrap --quiet --variant=apt --include="$INCLUDE" \
  --customize-hook="$hook_pool" --customize-hook="$hook_clean" \
  "$SUITE" "$tmp/rootfs" >/dev/null
[ -x "$tmp/rootfs/usr/sbin/sshd" ] || { echo "mmdebstrap produced no sshd" >&2; exit 1; }
ls "$tmp"/pool/containerd_*.deb >/dev/null || { echo "containerd was not downloaded into the pool" >&2; exit 1; }
touch "$tmp/.done"
rm -rf "$dest"
mv "$tmp" "$dest"
# builds for other package lists, unused for a day (another checkout may still use its own)
find "$CACHE/lab" -mindepth 1 -maxdepth 1 -name "$SUITE-*" ! -name '*.tmp.*' ! -path "$dest" -mmin +1440 -exec rm -rf {} +
trap - EXIT
echo "lab root filesystem $SUITE and package pool ($dest)"
