#!/usr/bin/env bash
# The API server's encryption configuration on the control plane, written only when it
# differs, root's only (the file 0600 from the start, its folder 0700): it holds the keys
# that decrypt every Secret.
# stdin: the rendered configuration. Environment: DRY_RUN, ENCRYPTION_CONFIG (its path).
# shellcheck shell=bash
# (lib.sh is prepended by datacloud.remote)
: "${ENCRYPTION_CONFIG:?}"
cfg=$(cat)
dir=$(dirname "$ENCRYPTION_CONFIG")
if [ ! -d "$dir" ] || [ "$(stat -c %a "$dir")" != 700 ]; then
  change "make $dir, readable by root only" && install -d -m 0700 "$dir"
fi
umask 077
ensure_file "$ENCRYPTION_CONFIG" "$cfg" 0600
if [ -f "$ENCRYPTION_CONFIG" ] && [ "$(stat -c %a "$ENCRYPTION_CONFIG")" != 600 ]; then
  change "make $ENCRYPTION_CONFIG readable by root only" && chmod 0600 "$ENCRYPTION_CONFIG"
fi
exit 0
