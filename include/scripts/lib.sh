#!/usr/bin/env bash
# Shared helpers, prepended by datacloud.remote to every script it runs
# (the script travels as the argument of `bash -c`, never as a file).
#
# Protocol on stdout, read by datacloud.remote.Result:
#   @@change <what>      something was (or, with DRY_RUN=1, would be) changed
#   @@fact <key> <value> an observation the stage uses
# Everything else is log text, streamed to the task log line by line.
set -euo pipefail
export LC_ALL=C DEBIAN_FRONTEND=noninteractive
umask 022

DRY_RUN="${DRY_RUN:-0}"

log() { printf '%s\n' "$*"; }
fact() { printf '@@fact %s %s\n' "$1" "${2:-}"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# change WHAT: announce a change; returns 1 (do nothing) in a dry run.
#   change "write /etc/x" && write_file /etc/x "$content"
change() {
  if [ "$DRY_RUN" = "1" ]; then
    printf '@@change would %s\n' "$1"
    return 1
  fi
  printf '@@change %s\n' "$1"
  return 0
}

# ensure_file PATH CONTENT [MODE]: write PATH only when its content differs.
ensure_file() {
  local path="$1" content="$2" mode="${3:-0644}"
  if [ -f "$path" ] && [ "$(cat "$path")" = "$content" ]; then
    return 0
  fi
  if change "write $path"; then
    mkdir -p "$(dirname "$path")"
    printf '%s\n' "$content" > "$path.datacloud-tmp"
    chmod "$mode" "$path.datacloud-tmp"
    mv "$path.datacloud-tmp" "$path"
  fi
}

# pkg_version NAME: installed version or empty.
pkg_version() {
  dpkg-query -W -f='${Status} ${Version}\n' "$1" 2>/dev/null | sed -n 's/^[a-z]* ok installed //p'
}

# held_packages: names of held packages (read from dpkg: apt-mark would rebuild apt's cache).
held_packages() {
  dpkg-query -W -f='${db:Status-Want} ${Package}\n' 2>/dev/null | awk '$1 == "hold" {print $2}'
}

# user_error MESSAGE: a problem the administrator fixes (exit 3: no retries).
user_error() { printf '%s\n' "$*" >&2; exit 3; }

# ensure_unit NAME CONTENT: a systemd unit file, enabled for multi-user.target
# (by symlink, so it also works where systemd is not running right now).
ensure_unit() {
  local name="$1" content="$2"
  ensure_file "/etc/systemd/system/$name" "$content"
  local link="/etc/systemd/system/multi-user.target.wants/$name"
  if [ "$(readlink "$link" 2>/dev/null || true)" != "/etc/systemd/system/$name" ]; then
    if change "enable $name"; then
      mkdir -p "$(dirname "$link")"
      ln -sfn "/etc/systemd/system/$name" "$link"
    fi
  fi
}
