#!/usr/bin/env bash
# A node without its own uplink: default route and DNS through the gateway node.
# Environment: DRY_RUN, GATEWAY_IP, DNS_SERVERS (space separated, may be empty).
# shellcheck shell=bash
# (lib.sh is prepended by datacloud.remote)
: "${GATEWAY_IP:?}"
DNS_SERVERS="${DNS_SERVERS:-}"
current=$(ip -4 route show default | awk '{for (i = 1; i < NF; i++) if ($i == "via") print $(i + 1)}' | head -n 1)
if [ "$current" != "$GATEWAY_IP" ]; then
  change "route by default via $GATEWAY_IP (was ${current:-none})" && ip route replace default via "$GATEWAY_IP"
fi
ensure_unit datacloud-route.service "[Unit]
Description=datacloud: default route via the gateway node $GATEWAY_IP
After=network-online.target
Wants=network-online.target
[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/sbin/ip route replace default via $GATEWAY_IP
[Install]
WantedBy=multi-user.target"

if [ -n "$DNS_SERVERS" ]; then
  # shellcheck disable=SC2086  # one word per server
  lines=$(printf 'nameserver %s\n' $DNS_SERVERS)
  if [ -L /etc/resolv.conf ]; then
    # systemd-resolved owns resolv.conf: configure it instead
    # shellcheck disable=SC2086
    ensure_file /etc/systemd/resolved.conf.d/datacloud.conf "$(printf '[Resolve]\nDNS=%s' "$DNS_SERVERS")"
  else
    ensure_file /etc/resolv.conf "$lines"
  fi
fi
