#!/usr/bin/env bash
# ./dev setup — install everything datacloud needs on this machine, idempotently.
# Downloads and builds are cached under ${XDG_CACHE_HOME:-~/.cache}/datacloud so a
# fresh clone on the same machine reuses them. A warm re-run only checks and skips.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/datacloud"
VENV="$ROOT/.venv"
PYTHON="${DATACLOUD_PYTHON:-python3}"
mkdir -p "$CACHE"
started=$(date +%s)
did=()
skipped=()

say() { printf 'setup | %s\n' "$*"; }
die() { printf 'setup | error: %s\n' "$*" >&2; exit 1; }

# pin KEY: one value from manifests/versions.yaml
# shellcheck source=include/scripts/pin.sh
. "$ROOT/include/scripts/pin.sh"

# --- Debian packages -------------------------------------------------------
apt_packages=(
  openssh-server openssh-client   # the SSH lab nodes and remote execution
  iproute2 procps psmisc util-linux kmod  # network namespaces, process control
  mmdebstrap                      # lab node root filesystems
  prometheus                      # promtool: check and unit-test alert rules
  shellcheck                      # lint include/scripts
  graphviz                        # docs/architecture picture
  chromium                        # browser tests (headless, driven by Playwright)
  nodejs npm                      # playwright-core for the browser tests
  maven                           # MongoDB Spark connector jars
  openjdk-17-jre-headless         # Spark 4 runs on Java 17
  docker-registry busybox-static containerd runc  # lab image mirror (tests/lab/mirror.py) and its pull test
)
missing=()
for p in "${apt_packages[@]}"; do
  case "$p" in \#*) continue ;; esac
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# node/npm/java/mvn may come from outside Debian on this kind of machine.
filtered=()
for p in "${missing[@]}"; do
  case "$p" in
    nodejs) command -v node >/dev/null || filtered+=("$p") ;;
    npm) command -v npm >/dev/null || filtered+=("$p") ;;
    maven) command -v mvn >/dev/null || filtered+=("$p") ;;
    openjdk-17-jre-headless) command -v java >/dev/null || filtered+=("$p") ;;
    *) filtered+=("$p") ;;
  esac
done
if [ "${#filtered[@]}" -gt 0 ]; then
  [ "$(id -u)" -eq 0 ] || die "Debian packages missing (${filtered[*]}); run ./dev setup as root or install them with apt-get."
  say "apt | installing ${filtered[*]}"
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${filtered[@]}" >/dev/null
  did+=("apt: ${filtered[*]}")
else
  skipped+=("apt packages (all present)")
fi

# --- Python virtualenv -------------------------------------------------------
stamp_src=$(cat "$ROOT/requirements.txt" "$ROOT/requirements-dev.txt" "$ROOT/constraints.txt" "$ROOT/pyproject.toml" | sha256sum | cut -c1-16)
if [ -x "$VENV/bin/python" ] && [ "$(cat "$VENV/.datacloud-stamp" 2>/dev/null)" = "$stamp_src" ]; then
  skipped+=("python venv (requirements unchanged)")
else
  "$PYTHON" -c 'import sys; sys.exit(0 if (3, 11) <= sys.version_info[:2] < (3, 13) else 1)' \
    || die "$PYTHON is $("$PYTHON" -V 2>&1); datacloud needs Python 3.11 or 3.12 (set DATACLOUD_PYTHON)."
  [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
  say "pip | installing requirements-dev.txt with constraints.txt (first time ~2 min)"
  export PIP_CACHE_DIR="${PIP_CACHE_DIR:-$CACHE/pip}"
  "$VENV/bin/pip" install -q --disable-pip-version-check -c "$ROOT/constraints.txt" -r "$ROOT/requirements-dev.txt"
  # pyspark-client (pulled by the spark provider) writes into the same pyspark/
  # package as pyspark; reinstall the full pyspark last so its jars and
  # modules are the ones on disk.
  spark_version=$(pin spark)
  "$VENV/bin/pip" install -q --disable-pip-version-check --force-reinstall --no-deps "pyspark==$spark_version"
  "$VENV/bin/pip" install -q --disable-pip-version-check --no-deps -e "$ROOT"
  "$VENV/bin/python" - "$spark_version" <<'PY'
import os, sys
import pyspark
from pyspark.sql import SparkSession  # noqa: F401  (fails if files are mixed)
want = sys.argv[1]
jars = os.path.join(os.path.dirname(pyspark.__file__), "jars")
if pyspark.__version__ != want or not os.path.isdir(jars):
    sys.exit(f"pyspark is {pyspark.__version__} (jars present: {os.path.isdir(jars)}), expected {want} with jars")
PY
  echo "$stamp_src" > "$VENV/.datacloud-stamp"
  did+=("python venv")
fi

# --- FerretDB ------------------------------------------------------------------
ferret_version=$(pin ferretdb)
FERRET="$CACHE/bin/ferretdb-$ferret_version"
if [ -x "$FERRET" ]; then
  skipped+=("ferretdb $ferret_version")
else
  command -v go >/dev/null || die "Go is missing; install Go 1.22 or newer to build FerretDB."
  say "go | building FerretDB $ferret_version"
  # `go install …/cmd/ferretdb@VERSION` builds a binary that panics at start:
  # the module has no build/version/version.txt. Build from the same module
  # source with that file written, which is what FerretDB's own build does.
  src=$(cd "$CACHE" && GOFLAGS=-mod=mod go mod download -json "github.com/FerretDB/FerretDB@$ferret_version" \
        | sed -nE 's/^[[:space:]]*"Dir": "(.*)",?$/\1/p')
  [ -d "$src" ] || die "go mod download of FerretDB $ferret_version failed."
  build="$CACHE/build/ferretdb-$ferret_version"
  rm -rf "$build"; mkdir -p "$(dirname "$build")" "$CACHE/bin"
  cp -r "$src" "$build"; chmod -R u+w "$build"
  echo "$ferret_version" > "$build/build/version/version.txt"
  (cd "$build" && go build -trimpath -o "$FERRET.tmp" ./cmd/ferretdb)
  mv "$FERRET.tmp" "$FERRET"
  rm -rf "$build"
  did+=("ferretdb $ferret_version")
fi
ferret_reports=$("$FERRET" --version 2>&1 || true)
[[ "$ferret_reports" == *"version: $ferret_version"* ]] || die "$FERRET does not report $ferret_version."

# --- MongoDB Spark connector jars ------------------------------------------------
scala=$(pin scala_binary); connector=$(pin mongo_spark_connector)
JARS="$CACHE/jars/mongo-spark-connector_$scala-$connector"
if ls "$JARS"/mongo-spark-connector_*.jar >/dev/null 2>&1; then
  skipped+=("spark connector jars $connector (scala $scala)")
else
  say "maven | resolving mongo-spark-connector_$scala:$connector"
  rm -rf "$JARS.tmp"
  mvn -q -B -f "$ROOT/tools/spark-jars/pom.xml" dependency:copy-dependencies \
      -Dscala.binary="$scala" -Dmongo.spark.version="$connector" \
      -DincludeScope=runtime -DoutputDirectory="$JARS.tmp" >/dev/null
  mv "$JARS.tmp" "$JARS"
  did+=("spark connector jars $connector")
fi

# --- Playwright (browser tests; uses Debian's chromium, never downloads a browser) --
NODE_DIR="$CACHE/node"
if [ -f "$ROOT/tests/browser/package.json" ]; then
  if [ -d "$NODE_DIR/node_modules/playwright-core" ] && cmp -s "$ROOT/tests/browser/package.json" "$NODE_DIR/package.json"; then
    skipped+=("playwright-core")
  else
    say "npm | installing playwright-core"
    mkdir -p "$NODE_DIR"
    cp "$ROOT/tests/browser/package.json" "$NODE_DIR/package.json"
    [ -f "$ROOT/tests/browser/package-lock.json" ] && cp "$ROOT/tests/browser/package-lock.json" "$NODE_DIR/"
    (cd "$NODE_DIR" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm install --no-audit --no-fund --silent >/dev/null)
    did+=("playwright-core")
  fi
fi

# --- extra steps owned by other parts (the SSH lab's root filesystem) ---------------
for step in "$ROOT"/include/scripts/setup.d/*.sh; do
  [ -e "$step" ] || continue
  out=$(CACHE="$CACHE" ROOT="$ROOT" bash "$step") || die "$(basename "$step") failed: $out"
  case "$out" in skipped*) skipped+=("${out#skipped: }") ;; *) did+=("$out") ;; esac
done

elapsed=$(( $(date +%s) - started ))
for d in "${did[@]+"${did[@]}"}"; do say "installed: $d"; done
for s in "${skipped[@]+"${skipped[@]}"}"; do say "skipped: $s"; done
say "done in ${elapsed}s (cache: $CACHE)"
