#!/bin/sh
# cryptboot's event script for busybox udhcpc in the initramfs (cryptboot.network):
# sets the lease's address, default route and DNS servers on $interface and writes the lease
# to /run/cryptboot/net/$interface.lease for the boot's log.
# udhcpc passes: $1 = deconfig|bound|renew|leasefail|nak, and interface, ip, mask (prefix
# length), subnet, broadcast, router, dns, domain in the environment.
# shellcheck disable=SC2154  # udhcpc sets interface, ip, router... in the environment
dir=${CRYPTBOOT_NET_DIR:-/run/cryptboot/net}  # (overridden by the unit tests only)
resolv=${CRYPTBOOT_RESOLV_CONF:-/etc/resolv.conf}
case "$1" in
deconfig)
    ip -4 addr flush dev "$interface"
    ip link set "$interface" up
    ;;
bound|renew)
    ip -4 addr flush dev "$interface"
    if [ -n "$broadcast" ]; then
        ip -4 addr add "$ip/${mask:-24}" broadcast "$broadcast" dev "$interface"
    else
        ip -4 addr add "$ip/${mask:-24}" dev "$interface"
    fi
    for r in $router; do
        ip -4 route add default via "$r" dev "$interface" && break
    done
    touch "$resolv"
    if [ -n "$domain" ] && ! grep -qx "search $domain" "$resolv"; then
        echo "search $domain" >>"$resolv"
    fi
    for d in $dns; do
        grep -qx "nameserver $d" "$resolv" || echo "nameserver $d" >>"$resolv"
    done
    mkdir -p "$dir"
    printf 'ip=%s\nmask=%s\nrouter=%s\ndns=%s\ndomain=%s\n' \
        "$ip" "${mask:-24}" "$router" "$dns" "$domain" >"$dir/$interface.lease"
    ;;
esac
exit 0
