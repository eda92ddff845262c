#!/usr/bin/env bash
# helm at the pinned version on the control plane, held.
# Environment: DRY_RUN, HELM_PKG_VERSION, HELM_APT_SOURCE and HELM_APT_KEY (the repository's
# key, base64 of its OpenPGP packets, checked against its pinned fingerprint by datacloud;
# both empty when the inventory's package repository serves helm too).
# shellcheck shell=bash
# (lib.sh is prepended by datacloud.remote)
: "${HELM_PKG_VERSION:?}"
HELM_APT_SOURCE="${HELM_APT_SOURCE:-}" HELM_APT_KEY="${HELM_APT_KEY:-}"
KEYRING=/etc/apt/keyrings/datacloud-helm.gpg
if [ "$(pkg_version helm)" != "$HELM_PKG_VERSION" ]; then
  update=0
  if [ -n "$HELM_APT_SOURCE" ]; then
    if [ -n "$HELM_APT_KEY" ] && [ "$(base64 -d <<<"$HELM_APT_KEY" | sha256sum)" != "$(sha256sum <"$KEYRING" 2>/dev/null || true)" ] \
      && change "write the helm repository key into $KEYRING"; then
      mkdir -p /etc/apt/keyrings
      base64 -d <<<"$HELM_APT_KEY" >"$KEYRING.datacloud-tmp"
      chmod 0644 "$KEYRING.datacloud-tmp"
      mv "$KEYRING.datacloud-tmp" "$KEYRING"
      update=1
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
