#!/usr/bin/env bash
# PID 1 side of a lab node. Started by tests/lab/lab.py as
#   ip netns exec NS unshare --mount --uts --pid --fork --kill-child bash node-init.sh ...
# so every mount below lives in the node's private mount namespace and
# disappears with it; the host never sees the overlay.
set -euo pipefail
lower="$1" upper="$2" work="$3" merged="$4" shared="$5" name="$6"

mount -t overlay overlay -o "lowerdir=$lower,upperdir=$upper,workdir=$work" "$merged"
mount -t proc proc "$merged/proc"
mount -t sysfs sysfs "$merged/sys"
mount -t tmpfs -o mode=0755 tmpfs "$merged/run"
mount -t tmpfs -o mode=0755 tmpfs "$merged/dev"
for dev in null zero full random urandom tty; do
  touch "$merged/dev/$dev"
  mount --bind "/dev/$dev" "$merged/dev/$dev"
done
mkdir -p "$merged/dev/pts" "$merged/dev/shm" "$merged/run/sshd" "$merged/var/lib/double-cluster"
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts "$merged/dev/pts"
ln -s pts/ptmx "$merged/dev/ptmx"
mount -t tmpfs tmpfs "$merged/dev/shm"
# State shared by the kubeadm/kubectl/helm doubles of all nodes (their "API server").
mount --bind "$shared" "$merged/var/lib/double-cluster"
hostname "$name"
exec chroot "$merged" /usr/sbin/sshd -D -e
