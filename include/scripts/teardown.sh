#!/usr/bin/env bash
# platform_teardown on one node: kubeadm reset and the files datacloud wrote for
# Kubernetes. Packages stay installed (and held); node_prep's settings stay.
# Environment: DRY_RUN.
# shellcheck shell=bash
# (lib.sh is prepended by datacloud.remote)
if [ -e /etc/kubernetes/kubelet.conf ] || [ -e /etc/kubernetes/admin.conf ] || [ -e /etc/kubernetes/manifests/kube-apiserver.yaml ]; then
  if command -v kubeadm >/dev/null; then
    change "kubeadm reset" && kubeadm reset -f
  else
    change "remove /etc/kubernetes (kubeadm is not installed)" && rm -rf /etc/kubernetes
  fi
fi
# /var/lib/rook is Rook's dataDirHostPath (mon and OSD state of the old cluster), and
# /var/lib/datacloud/local-path holds the local-path volumes of the old cluster's claims.
# Folders are emptied, not removed: containerd watches /etc/cni/net.d and does not
# see a new CNI configuration in a folder that was deleted and made again (the
# nodes stayed NotReady after a teardown and a new run), and a folder may be a mount point.
for p in /etc/cni/net.d /var/lib/etcd /var/lib/rook /var/lib/datacloud/local-path /etc/datacloud/cluster-name /etc/datacloud/kubeadm-config.yaml /etc/datacloud/kubeadm-join.yaml; do
  if [ -d "$p" ] && [ ! -L "$p" ]; then
    if [ -n "$(ls -A "$p")" ]; then
      change "empty $p" && find "$p" -mindepth 1 -delete
    fi
  elif [ -e "$p" ] || [ -L "$p" ]; then
    change "remove $p" && rm -f "$p"
  fi
done
# The pod network of the old cluster: a new cluster may lease this node another pod
# subnet (nodes join in any order), and the bridge plugin refuses a cni0 that still
# holds the old gateway address ("already has an IP address different from"), while a
# stale flannel lease would have install-cni write the old subnet: pods, CoreDNS
# first, never start. flanneld and the bridge plugin make all of it again.
for link in cni0 flannel.1; do
  if ip link show "$link" >/dev/null 2>&1; then
    change "delete the network link $link" && ip link delete "$link"
  fi
done
for p in /run/flannel/subnet.env /var/lib/cni/networks/cbr0; do
  if [ -e "$p" ]; then
    change "remove $p" && rm -rf "$p"
  fi
done
left=""
for link in cni0 flannel.1; do
  ip link show "$link" >/dev/null 2>&1 && left="$left link:$link"
done
for p in /etc/kubernetes/kubelet.conf /etc/kubernetes/admin.conf /etc/kubernetes/manifests/kube-apiserver.yaml /etc/datacloud/cluster-name; do
  [ -e "$p" ] && left="$left $p"
done
fact left "${left# }"
