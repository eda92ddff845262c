#!/usr/bin/env bash
# gateway on the node with internet access: forward and NAT the private subnet
# out of the public interface (the thesis's network), persistently.
# Environment: DRY_RUN, SUBNET (e.g. 192.168.1.0/24), PUBLIC_IF (e.g. eth1).
# shellcheck shell=bash
# (lib.sh is prepended by datacloud.remote)
: "${SUBNET:?}" "${PUBLIC_IF:?}"
ip link show "$PUBLIC_IF" >/dev/null 2>&1 \
  || user_error "interface $PUBLIC_IF does not exist on $(hostname); set network.public_interface to its interface towards the internet"
command -v nft >/dev/null || user_error "nft is missing on $(hostname); install the nftables package there"

ensure_file /etc/sysctl.d/90-datacloud-gateway.conf "net.ipv4.ip_forward = 1"
if [ "$(sysctl -n net.ipv4.ip_forward)" != 1 ]; then
  change "turn on IPv4 forwarding now" && sysctl -q -w net.ipv4.ip_forward=1
fi

rules="table ip datacloud_gateway {
	chain postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		ip saddr $SUBNET oifname \"$PUBLIC_IF\" masquerade
	}
}"
ensure_file /etc/datacloud/gateway.nft "$(printf 'table ip datacloud_gateway\ndelete table ip datacloud_gateway\n%s' "$rules")"
live=$(nft list table ip datacloud_gateway 2>/dev/null || true)
if ! grep -q "ip saddr $SUBNET oifname \"$PUBLIC_IF\" masquerade" <<<"$live"; then
  change "NAT $SUBNET out of $PUBLIC_IF now (nft table datacloud_gateway)" && nft -f /etc/datacloud/gateway.nft
fi
ensure_unit datacloud-gateway.service "[Unit]
Description=datacloud: NAT the private subnet out of $PUBLIC_IF
After=network-pre.target
[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/sbin/nft -f /etc/datacloud/gateway.nft
[Install]
WantedBy=multi-user.target"
