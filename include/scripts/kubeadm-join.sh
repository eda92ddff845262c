#!/usr/bin/env bash
# kubeadm join of one worker that is not a member yet (the stage checked).
# stdin: the JoinConfiguration with a fresh token; written 0600, removed after.
# Environment: DRY_RUN, CLUSTER_NAME, ENDPOINT.
# shellcheck shell=bash
# (lib.sh is prepended by datacloud.remote)
: "${CLUSTER_NAME:?}" "${ENDPOINT:?}"
cfg=$(cat)
if [ -f /etc/kubernetes/kubelet.conf ]; then
  user_error "$(hostname) has /etc/kubernetes/kubelet.conf but is not a node of the cluster; run platform_teardown or kubeadm reset there"
fi
if change "kubeadm join $ENDPOINT"; then
  mkdir -p /etc/datacloud
  (umask 077; printf '%s\n' "$cfg" > /etc/datacloud/kubeadm-join.yaml)
  trap 'rm -f /etc/datacloud/kubeadm-join.yaml' EXIT
  kubeadm join --config /etc/datacloud/kubeadm-join.yaml
fi
ensure_file /etc/datacloud/cluster-name "$CLUSTER_NAME"
