#!/usr/bin/env bash
# PID 1 side of a lab node. Started by tests/lab/lab.py as
#   nsenter --net=/run/netns/NS unshare --mount --uts --pid --fork --kill-child bash node-init.sh ...
# (nsenter, not `ip netns exec`: that remounts /sys and hides /sys/fs/cgroup,
# which kubelet needs), so every mount below lives in the node's private mount
# namespace and disappears with it; the host never sees the overlay. Needs
# busybox-static on the host (./dev setup installs it).
set -euo pipefail
lower="$1" upper="$2" work="$3" merged="$4" state="$5" name="$6"

mount --make-rprivate /
mount -t overlay overlay -o "lowerdir=$lower,upperdir=$upper,workdir=$work" "$merged"
mount -t proc proc "$merged/proc"
mount -t sysfs sysfs "$merged/sys"
# the host's cgroup hierarchies (kubelet and runc create the node's cgroups there)
mount --rbind /sys/fs/cgroup "$merged/sys/fs/cgroup"
mount -t tmpfs -o mode=0755 tmpfs "$merged/run"
mount -t tmpfs -o mode=0755 tmpfs "$merged/dev"
for dev in null zero full random urandom tty kmsg; do
  [ -e "/dev/$dev" ] || continue
  touch "$merged/dev/$dev"
  mount --bind "/dev/$dev" "$merged/dev/$dev"
done
mkdir -p "$merged/dev/pts" "$merged/dev/shm" "$merged/run/sshd" "$merged/run/systemd/system" "$merged/run/lock"
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts "$merged/dev/pts"
ln -s pts/ptmx "$merged/dev/ptmx"
mount -t tmpfs tmpfs "$merged/dev/shm"
# containerd's snapshots and kubelet/etcd data on a real filesystem, not on the
# overlay root (overlayfs cannot be the upper layer of containerd's overlay snapshots)
for d in var/lib/containerd var/lib/kubelet var/lib/etcd; do
  mkdir -p "$state/$d" "$merged/$d"
  mount --bind "$state/$d" "$merged/$d"
done
hostname "$name"
# The node's root becomes the namespace's root (pivot_root, not chroot): runc
# enters a container's mount namespace for `kubectl exec` and takes that
# namespace's root as the root of the process, which in a chroot would be the host's.
busybox="$(command -v busybox)"  # static (Debian's busybox-static): runs after the host's tree is gone
mkdir -p "$merged/run/lab" && cp "$busybox" "$merged/run/lab/busybox"
cd "$merged"
pivot_root . mnt
cd /
/run/lab/busybox umount -l /mnt
# mount propagation like a systemd host (kubelet and containers expect a shared root)
/run/lab/busybox mount --make-rshared /
# boot: the services enabled for multi-user.target (containerd, kubelet), then sshd
/usr/local/bin/systemctl boot || true
exec /usr/sbin/sshd -D -e
