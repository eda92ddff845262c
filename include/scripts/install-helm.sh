#!/usr/bin/env bash
# helm at the pinned version on the control plane, held.
# Environment: DRY_RUN, HELM_PKG_VERSION, HELM_APT_SOURCE and HELM_APT_KEY_URL
# (both empty when the inventory's package repository serves helm too).
# shellcheck shell=bash
# (lib.sh is prepended by datacloud.remote)
: "${HELM_PKG_VERSION:?}"
HELM_APT_SOURCE="${HELM_APT_SOURCE:-}" HELM_APT_KEY_URL="${HELM_APT_KEY_URL:-}"
KEYRING=/etc/apt/keyrings/datacloud-helm.gpg
if [ "$(pkg_version helm)" != "$HELM_PKG_VERSION" ]; then
  update=0
  if [ -n "$HELM_APT_SOURCE" ]; then
    if [ -n "$HELM_APT_KEY_URL" ] && [ ! -s "$KEYRING" ] && change "fetch the helm repository key into $KEYRING"; then
      mkdir -p /etc/apt/keyrings
      curl -fsSL --retry 3 "$HELM_APT_KEY_URL" | gpg --dearmor --batch --yes -o "$KEYRING"
    fi
    before=$(cat /etc/apt/sources.list.d/datacloud-helm.list 2>/dev/null || true)
    ensure_file /etc/apt/sources.list.d/datacloud-helm.list "$HELM_APT_SOURCE"
    [ "$before" = "$HELM_APT_SOURCE" ] || update=1
  fi
  if change "install helm=$HELM_PKG_VERSION"; then
    policy=$(apt-cache policy helm 2>/dev/null || true)
    if [ "$update" = 1 ] || ! grep -qF "$HELM_PKG_VERSION" <<<"$policy"; then
      apt-get update -q -o Acquire::Retries=3 >/dev/null
    fi
    apt-mark unhold helm >/dev/null 2>&1 || true
    apt-get install -y -q --no-install-recommends --allow-downgrades --allow-change-held-packages "helm=$HELM_PKG_VERSION" >/dev/null
  fi
fi
held=$(held_packages)
if [ -n "$(pkg_version helm)" ] && ! grep -qx helm <<<"$held"; then
  change "hold helm at $HELM_PKG_VERSION" && apt-mark hold helm >/dev/null
fi
fact helm "$(pkg_version helm)"
