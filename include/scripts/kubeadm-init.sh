#!/usr/bin/env bash
# kubeadm init on the control plane, only if it is not initialised yet.
# stdin: the rendered kubeadm configuration. Environment: DRY_RUN, CLUSTER_NAME, K8S_VERSION.
# shellcheck shell=bash
# (lib.sh is prepended by datacloud.remote)
: "${CLUSTER_NAME:?}" "${K8S_VERSION:?}"
cfg=$(cat)
command -v kubeadm >/dev/null || [ "$DRY_RUN" = 1 ] || user_error "kubeadm is not installed on $(hostname); run the node_prep stage first"
before=$(cat /etc/datacloud/kubeadm-config.yaml 2>/dev/null || true)
ensure_file /etc/datacloud/kubeadm-config.yaml "$cfg" 0600
if [ -f /etc/kubernetes/admin.conf ] && [ -f /etc/kubernetes/manifests/kube-apiserver.yaml ]; then
  log "kubeadm | control plane already initialised"
  fact initialised already
  if [ -n "$before" ] && [ "$before" != "$cfg" ]; then
    log "kubeadm | the configuration changed since init; kubeadm does not reconfigure a running cluster (use kubeadm upgrade)"
  fi
else
  if change "kubeadm init (Kubernetes $K8S_VERSION)"; then
    kubeadm init --config /etc/datacloud/kubeadm-config.yaml --skip-token-print --skip-certificate-key-print
  fi
  fact initialised now
fi
ensure_file /etc/datacloud/cluster-name "$CLUSTER_NAME"
