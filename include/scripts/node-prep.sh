#!/usr/bin/env bash
# node_prep on one node: swap off, kernel modules, sysctl, package sources,
# containerd (systemd cgroups, pinned sandbox image), kubelet/kubeadm/kubectl
# at the pinned version and held. Observes first; changes only what differs.
#
# Environment (set by datacloud.stages.node_prep, every value quoted):
#   DRY_RUN            1: report what would change, change nothing
#   K8S_PKG_VERSION    e.g. 1.34.2-1.1
#   SANDBOX_IMAGE      e.g. registry.k8s.io/pause:3.10.1
#   APT_SOURCE         the complete apt source line of the package repository
#   APT_KEY            the repository's key, base64 of its OpenPGP packets, already checked
#                      against its pinned fingerprint by datacloud (empty: none, or trusted)
#   APT_KEY_FINGERPRINT  that fingerprint (for the log)
#   CGROUP_DRIVER      systemd | cgroupfs (containerd's runc SystemdCgroup follows it)
#   RESTRICT_OOM_SCORE_ADJ  1: containerd's CRI restrict_oom_score_adj (no CAP_SYS_RESOURCE)
#   REGISTRY_MIRRORS   one line per upstream registry: "HOST URL [URL...]" (hosts.toml files)
#   CGROUP_ROOT        kubelet's per-node cgroup root (empty: none), created in every v1 hierarchy
# shellcheck shell=bash
# (lib.sh is prepended by datacloud.remote: log, fact, change, ensure_file, pkg_version)
: "${K8S_PKG_VERSION:?}" "${SANDBOX_IMAGE:?}" "${APT_SOURCE:?}"
APT_KEY="${APT_KEY:-}" APT_KEY_FINGERPRINT="${APT_KEY_FINGERPRINT:-}"
KEYRING=/etc/apt/keyrings/datacloud-kubernetes.gpg

# --- swap -------------------------------------------------------------------
if [ "$(tail -n +2 /proc/swaps | wc -l)" -gt 0 ]; then
  change "turn swap off (swapoff -a)" && swapoff -a
fi
if grep -Eq '^[^#[:space:]][^#]*[[:space:]]swap[[:space:]]' /etc/fstab; then
  if change "comment out swap entries in /etc/fstab"; then
    sed -E -i.datacloud-bak 's|^([^#[:space:]][^#]*[[:space:]]swap[[:space:]].*)$|# \1  # disabled by datacloud: kubelet needs swap off|' /etc/fstab
  fi
fi

# --- kernel modules -----------------------------------------------------------
ensure_file /etc/modules-load.d/datacloud-k8s.conf "$(printf 'overlay\nbr_netfilter')"
module_loaded() {
  case "$1" in
    # built into the kernel, or loaded
    br_netfilter) [ -e /proc/sys/net/bridge/bridge-nf-call-iptables ] ;;
    *) [ -d "/sys/module/$1" ] || grep -q "^$1 " /proc/modules 2>/dev/null ;;
  esac
}
for m in overlay br_netfilter; do
  if ! module_loaded "$m"; then
    change "load kernel module $m" && modprobe "$m"
  fi
done

# --- sysctl ----------------------------------------------------------------------
sysctls=(net.bridge.bridge-nf-call-iptables=1 net.bridge.bridge-nf-call-ip6tables=1 net.ipv4.ip_forward=1)
ensure_file /etc/sysctl.d/99-datacloud-k8s.conf "$(printf '%s\n' "${sysctls[@]}" | sed 's/=/ = /')"
for kv in "${sysctls[@]}"; do
  key="${kv%%=*}" want="${kv#*=}"
  if [ "$(sysctl -n "$key" 2>/dev/null || echo missing)" != "$want" ]; then
    change "set $key = $want now" && sysctl -q -w "$key=$want"
  fi
done

# --- package sources ---------------------------------------------------------------
# a dpkg run interrupted earlier (lost connection, reboot) must finish first
if [ -n "$(ls -A /var/lib/dpkg/updates 2>/dev/null)" ]; then
  change "finish an interrupted dpkg run (dpkg --configure -a)" && dpkg --configure -a
fi
need_update=0
if [ -n "$APT_KEY" ] && [ "$(base64 -d <<<"$APT_KEY" | sha256sum)" != "$(sha256sum <"$KEYRING" 2>/dev/null || true)" ]; then
  if change "write the repository key $APT_KEY_FINGERPRINT into $KEYRING"; then
    mkdir -p /etc/apt/keyrings
    base64 -d <<<"$APT_KEY" >"$KEYRING.datacloud-tmp"
    chmod 0644 "$KEYRING.datacloud-tmp"
    mv "$KEYRING.datacloud-tmp" "$KEYRING"
  fi
  need_update=1
fi
before=$(cat /etc/apt/sources.list.d/datacloud.list 2>/dev/null || true)
ensure_file /etc/apt/sources.list.d/datacloud.list "$APT_SOURCE"
[ "$before" = "$APT_SOURCE" ] || need_update=1

want_k8s=(kubelet kubeadm kubectl)
missing=0
[ -n "$(pkg_version containerd)" ] || missing=1
for p in "${want_k8s[@]}"; do
  [ "$(pkg_version "$p")" = "$K8S_PKG_VERSION" ] || missing=1
done
if [ "$missing" = 1 ] && [ "$DRY_RUN" != 1 ] && { [ "$need_update" = 1 ] || ! compgen -G '/var/lib/apt/lists/*_Packages' >/dev/null; }; then
  log "apt | update"
  apt-get update -q -o Acquire::Retries=3 >/dev/null
fi

# --- packages: containerd, and kubelet/kubeadm/kubectl pinned — one apt transaction ---
install=()
if [ -z "$(pkg_version containerd)" ]; then
  change "install containerd" && install+=(containerd)
fi
wrong=()
for p in "${want_k8s[@]}"; do
  [ "$(pkg_version "$p")" = "$K8S_PKG_VERSION" ] || wrong+=("$p=$K8S_PKG_VERSION")
done
if [ "${#wrong[@]}" -gt 0 ] && change "install ${wrong[*]}"; then
  install+=("${wrong[@]}")
  apt-mark unhold "${want_k8s[@]}" >/dev/null 2>&1 || true
fi
if [ "${#install[@]}" -gt 0 ]; then
  apt-get install -y -q --no-install-recommends --allow-downgrades --allow-change-held-packages "${install[@]}" >/dev/null
fi
held=$(held_packages)
hold=()
for p in "${want_k8s[@]}"; do
  if ! grep -qx "$p" <<<"$held" && [ -n "$(pkg_version "$p")" ]; then
    change "hold $p at $K8S_PKG_VERSION" && hold+=("$p")
  fi
done
[ "${#hold[@]}" -eq 0 ] || apt-mark hold "${hold[@]}" >/dev/null

# --- containerd configuration: cgroup driver, pinned sandbox image, registry mirrors ----
CGROUP_DRIVER="${CGROUP_DRIVER:-systemd}" RESTRICT_OOM_SCORE_ADJ="${RESTRICT_OOM_SCORE_ADJ:-0}"
REGISTRY_MIRRORS="${REGISTRY_MIRRORS:-}" CGROUP_ROOT="${CGROUP_ROOT:-}"
HOSTS_DIR=/etc/containerd/certs.d
MANAGED="# managed by datacloud node_prep"
# hosts.toml per upstream registry: the mirrors first, the registry itself last.
upstream_server() {
  case "$1" in
    docker.io) echo "https://registry-1.docker.io" ;;
    *) echo "https://$1" ;;
  esac
}
mirrored=()
while read -r host urls; do
  [ -n "$host" ] || continue
  mirrored+=("$host")
  toml="$MANAGED"$'\n'"server = \"$(upstream_server "$host")\""
  for url in $urls; do
    toml+=$'\n\n'"[host.\"$url\"]"$'\n'"  capabilities = [\"pull\", \"resolve\"]"
    path="${url#*://}"; path="${path#*/}"
    # a URL with a path is the registry API root itself (…/v2/<upstream>)
    [ "$path" != "${url#*://}" ] && toml+=$'\n'"  override_path = true"
  done
  ensure_file "$HOSTS_DIR/$host/hosts.toml" "$toml"
done <<<"$REGISTRY_MIRRORS"
for f in "$HOSTS_DIR"/*/hosts.toml; do
  if ! { [ -f "$f" ] && head -n 1 "$f" | grep -qxF "$MANAGED"; }; then continue; fi
  host=$(basename "$(dirname "$f")")
  if ! printf '%s\n' "${mirrored[@]+"${mirrored[@]}"}" | grep -qxF "$host"; then
    change "remove the mirror settings of $host ($f)" && rm -rf "$(dirname "$f")"
  fi
done
if command -v containerd >/dev/null; then
  systemd_cgroup=false; [ "$CGROUP_DRIVER" = systemd ] && systemd_cgroup=true
  restrict=false; [ "$RESTRICT_OOM_SCORE_ADJ" = 1 ] && restrict=true
  want_cfg=$(containerd config default \
    | sed -E -e "s/^([[:space:]]*SystemdCgroup = ).*/\\1$systemd_cgroup/" \
             -e "s|^([[:space:]]*sandbox_image = ).*|\\1\"$SANDBOX_IMAGE\"|" \
             -e "s/^([[:space:]]*restrict_oom_score_adj = ).*/\\1$restrict/" \
             -e "/registry\\]\$/,/^[[:space:]]*\\[/ s|^([[:space:]]*config_path = ).*|\\1\"$HOSTS_DIR\"|")
  grep -q "SystemdCgroup = $systemd_cgroup" <<<"$want_cfg" || die "containerd config default has no SystemdCgroup setting to set"
  grep -q "config_path = \"$HOSTS_DIR\"" <<<"$want_cfg" || die "containerd config default has no registry config_path setting to set"
  before=$(cat /etc/containerd/config.toml 2>/dev/null || true)
  ensure_file /etc/containerd/config.toml "$want_cfg"
  if [ "$before" != "$want_cfg" ] && [ "$DRY_RUN" != 1 ]; then
    if [ -d /run/systemd/system ]; then
      systemctl restart containerd
      log "containerd | restarted with the new configuration"
    else
      log "containerd | no running systemd here: the new configuration applies when containerd next starts"
    fi
  fi
else
  log "containerd | not installed yet (dry run)"
fi

# --- kubelet's own cgroup root (nodes that share one kernel) ----------------------
if [ -n "$CGROUP_ROOT" ] && [ -f /sys/fs/cgroup/cgroup.controllers ]; then
  [ -d "/sys/fs/cgroup$CGROUP_ROOT" ] || { change "create the cgroup $CGROUP_ROOT" && mkdir -p "/sys/fs/cgroup$CGROUP_ROOT"; }
elif [ -n "$CGROUP_ROOT" ]; then
  for h in /sys/fs/cgroup/*/; do
    case "$h" in */unified/) continue ;; esac
    [ -d "$h${CGROUP_ROOT#/}" ] || { change "create the cgroup $h${CGROUP_ROOT#/}" && mkdir -p "$h${CGROUP_ROOT#/}"; }
  done
fi
if [ -d /run/systemd/system ] && [ -n "$(pkg_version kubelet)" ] && ! systemctl is-enabled -q kubelet 2>/dev/null; then
  change "enable the kubelet service" && systemctl enable kubelet
fi

for p in containerd kubelet kubeadm kubectl; do fact "$p" "$(pkg_version "$p")"; done
