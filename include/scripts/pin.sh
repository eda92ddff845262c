# shellcheck shell=bash
# pin KEY: one value from manifests/versions.yaml (keys are unique there), for the
# setup scripts that run before the Python environment exists. Sourced by
# dev-setup.sh and setup.d/kube-build.sh; needs ROOT. Exits with a sentence when missing.
pin() {
  local v
  v=$(sed -nE "s/^[[:space:]]*$1:[[:space:]]*\"?([^\"#[:space:]]+)\"?.*/\1/p" "$ROOT/manifests/versions.yaml" | head -n 1)
  [ -n "$v" ] || { printf 'setup | error: manifests/versions.yaml has no %s\n' "'$1'" >&2; exit 1; }
  printf '%s' "$v"
}
