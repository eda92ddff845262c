#!/usr/bin/env bash
# ./dev setup step: the Debian root of the lab's Spark image (tests/lab/mirror.py).
#
# The platform's Spark image (manifests/images/spark) is the official Apache Spark
# image plus Python and the MongoDB connector; no image registry is reachable here,
# so the lab assembles the same content itself: this Debian bookworm root (a Java 17
# runtime, Python 3, tini, procps; openssl for the lab's operator double) below the pyspark wheel's Spark, the connector jars
# and our job files. Made once with mmdebstrap from Debian's packages; cached under
# $CACHE/lab/spark-os-<key>/rootfs (the key changes with the suite or the package list).
# Prints one line: "skipped: ..." or what it built; with --dest only the cache folder.
set -euo pipefail

CACHE="${CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/datacloud}"
SUITE=bookworm
INCLUDE=openjdk-17-jre-headless,python3,tini,procps,openssl
# what an image needs no copy of (manual pages are removed after the install: the
# Java packages' update-alternatives links need /usr/share/man/man1 while they configure)
EXCLUDE=('/usr/share/doc/*' '/usr/share/locale/*' '/usr/share/info/*')

key=$(printf '%s|%s|%s|v1' "$SUITE" "$INCLUDE" "${EXCLUDE[*]}" | sha256sum | cut -c1-12)
dest="$CACHE/lab/spark-os-$key"
if [ "${1:-}" = "--dest" ]; then
  echo "$dest"
  exit 0
fi
if [ -f "$dest/.done" ]; then
  echo "skipped: Spark image root $SUITE ($dest)"
  exit 0
fi
[ "$(id -u)" -eq 0 ] || { echo "the Spark image root needs root (mmdebstrap into a directory)" >&2; exit 1; }
command -v mmdebstrap >/dev/null || { echo "mmdebstrap is missing (apt-get install mmdebstrap)" >&2; exit 1; }

tmp="$dest.tmp.$$"
rm -rf "$tmp"
mkdir -p "$tmp"
trap 'rm -rf "$tmp"' EXIT
dpkgopts=()
for p in "${EXCLUDE[@]}"; do dpkgopts+=("--dpkgopt=path-exclude=$p"); done
# the image keeps no package sources, no downloaded lists and no host keys
hook_clean="rm -rf \"\$1\"/usr/share/man/* \"\$1\"/etc/apt/sources.list \"\$1\"/var/lib/apt/lists/* \"\$1\"/var/cache/apt/* \"\$1\"/var/log/*"
mmdebstrap --quiet --variant=essential --include="$INCLUDE" "${dpkgopts[@]}" \
  --customize-hook="$hook_clean" "$SUITE" "$tmp/rootfs" >/dev/null
[ -x "$tmp/rootfs/usr/lib/jvm/java-17-openjdk-amd64/bin/java" ] || { echo "mmdebstrap produced no Java 17 runtime" >&2; exit 1; }
[ -x "$tmp/rootfs/usr/bin/python3" ] || { echo "mmdebstrap produced no python3" >&2; exit 1; }
touch "$tmp/.done"
rm -rf "$dest"
mv "$tmp" "$dest"
find "$CACHE/lab" -mindepth 1 -maxdepth 1 -name "spark-os-*" ! -name '*.tmp.*' ! -path "$dest" -mmin +1440 -exec rm -rf {} +
trap - EXIT
echo "Spark image root $SUITE ($dest)"
