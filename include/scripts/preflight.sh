#!/usr/bin/env bash
# preflight on one node: observe only, change nothing. Prints @@fact lines
# that datacloud.stages.preflight checks against the inventory.
#
# Arguments: the devices the inventory marks for Ceph (e.g. /dev/sdb), if any.
# Environment: CLUSTER_NAME (to tell our own earlier install from leftovers).
# shellcheck shell=bash
# (lib.sh is prepended by datacloud.remote: log, fact)
: "${CLUSTER_NAME:?}"

# shellcheck source=/dev/null
. /etc/os-release 2>/dev/null || true
fact os_id "${ID:-unknown}"
fact os_version "${VERSION_ID:-unknown}"
fact os_name "${PRETTY_NAME:-unknown}"
fact kernel "$(uname -r)"
fact arch "$(uname -m)"
fact cpus "$(nproc)"
fact mem_mb "$(awk '/^MemTotal:/ {print int($2/1024)}' /proc/meminfo)"
fact swap_active "$(tail -n +2 /proc/swaps | wc -l)"
fact swap_fstab "$(grep -Ec '^[^#[:space:]][^#]*[[:space:]]swap[[:space:]]' /etc/fstab || true)"
fact hostname "$(hostname)"
fact time "$(date +%s.%N)"
fact systemd "$([ -d /run/systemd/system ] && echo yes || echo no)"
fact sudo_ok yes

# Ports Kubernetes needs, in use by something else?
ports=""
if command -v ss >/dev/null; then
  ports=$(ss -Hltn 2>/dev/null | awk '{print $4}' | sed -E 's/.*:([0-9]+)$/\1/' \
    | awk '($1==6443)||($1>=2379&&$1<=2380)||($1==10250)||($1==10257)||($1==10259)||($1>=30000&&$1<=32767)' \
    | sort -un | tr '\n' ' ')
fi
fact ports_in_use "${ports% }"

# Our own earlier install, or leftovers of someone else's?
ours=no
if [ -f /etc/datacloud/cluster-name ] && [ "$(cat /etc/datacloud/cluster-name)" = "$CLUSTER_NAME" ]; then ours=yes; fi
fact datacloud_cluster "$ours"
left=""
for p in /etc/kubernetes/manifests/kube-apiserver.yaml /etc/kubernetes/kubelet.conf /etc/kubernetes/admin.conf /etc/cni/net.d; do
  if [ -e "$p" ] && [ -n "$(ls -A "$p" 2>/dev/null || echo x)" ]; then left="$left $p"; fi
done
if [ -d /var/lib/etcd ] && [ -n "$(ls -A /var/lib/etcd 2>/dev/null)" ]; then left="$left /var/lib/etcd"; fi
fact leftovers "${left# }"

# The filesystem kubelet (nodefs, /var/lib/kubelet) and containerd (imagefs) keep their data on.
dir=/var/lib/containerd
[ -d "$dir" ] || dir=/var/lib
read -r kb_total kb_free <<<"$(df -Pk "$dir" 2>/dev/null | awk 'NR == 2 {print $2, $4}')" || true
fact var_lib_kb "${kb_total:-0}"
fact var_lib_free_kb "${kb_free:-0}"

# Disks for Ceph: present, no filesystem, no partitions.
for dev in "$@"; do
  if [ ! -b "$dev" ]; then
    fact "disk:$dev" missing
    continue
  fi
  fs=$(blkid -o value -s TYPE "$dev" 2>/dev/null || true)
  parts=$(lsblk -nro TYPE "$dev" 2>/dev/null | grep -c part || true)
  if [ -n "$fs" ]; then
    fact "disk:$dev" "filesystem:$fs"
  elif [ "$parts" -gt 0 ]; then
    fact "disk:$dev" "partitions:$parts"
  else
    fact "disk:$dev" raw
  fi
done
