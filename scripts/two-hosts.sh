#!/usr/bin/env bash
# two-hosts.sh: two "hosts" on one machine, as network namespaces on a
# private /24 that exists only inside them, and a third, a client: it holds
# the bridge (a switch) the hosts' veth links plug into, so that an address
# moving from one host to the other can be watched from it.
#
#   two-hosts.sh up   [NAME]         create NAME-a (10.77.0.1), NAME-b (10.77.0.2)
#                                    and the client NAME-c (10.77.0.3)
#   two-hosts.sh down [NAME]         remove them (and everything running in them)
#   two-hosts.sh a|b|c [NAME] CMD... run CMD on host a, b or the client (nsenter --net;
#                                    not `ip netns exec`, which remounts /sys
#                                    and makes CRIU refuse the dump)
#   two-hosts.sh migrate [NAME]      the CI recipe of docs/ci.md on them
#                                    (scripts/ci-recipe.sh): install phaul on
#                                    both (under /tmp/phaul-two-hosts-NAME/a
#                                    and /b), start phaul-service on b and a
#                                    workload on a serving on 10.77.0.10
#                                    (SERVICE_ADDR), migrate it with that
#                                    address, check it
#
# NAME defaults to phaul. Must run as root.
set -euo pipefail
cmd=${1:-}; shift || true
name=phaul
case "$cmd" in a | b | c) host=1 ;; *) host= ;; esac
if [ $# -gt 0 ] && [[ "$1" != -* ]] && [ -z "$host" ]; then name=$1; shift; fi
if [ -n "$host" ] && [ $# -gt 1 ] && [ -e "/run/netns/$1-a" ]; then name=$1; shift; fi
A=$name-a; B=$name-b; C=$name-c
STATE=/tmp/phaul-two-hosts-$name
ADDR_A=10.77.0.1; ADDR_B=10.77.0.2; ADDR_C=10.77.0.3

case "$cmd" in
up)
	if [ -e "/run/netns/$A" ]; then echo "two-hosts: $A exists"; exit 0; fi
	n=${name:0:8}
	ip netns add "$A"
	ip netns add "$B"
	ip netns add "$C"
	# The switch: a bridge in the client's namespace, which is also the
	# client's interface.
	nsenter --net="/run/netns/$C" sh -c "ip link set lo up; ip link add name $n-sw type bridge; ip addr add $ADDR_C/24 dev $n-sw; ip link set $n-sw up"
	for h in a b; do
		ip link add "$n-v$h" type veth peer name "$n-c$h"
		ip link set "$n-v$h" netns "$name-$h"
		ip link set "$n-c$h" netns "$C"
		nsenter --net="/run/netns/$C" sh -c "ip link set $n-c$h master $n-sw; ip link set $n-c$h up"
	done
	nsenter --net="/run/netns/$A" sh -c "ip link set lo up; ip addr add $ADDR_A/24 dev $n-va; ip link set $n-va up"
	nsenter --net="/run/netns/$B" sh -c "ip link set lo up; ip addr add $ADDR_B/24 dev $n-vb; ip link set $n-vb up"
	echo "two-hosts: $A ($ADDR_A) and $B ($ADDR_B) on the switch of client $C ($ADDR_C)"
	;;
down)
	for ns in "$A" "$B" "$C"; do
		[ -e "/run/netns/$ns" ] || continue
		for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
		ip netns del "$ns"
	done
	rm -rf "$STATE"
	for d in /sys/fs/cgroup/*/"$name"; do
		[ -d "$d" ] && find "$d" -depth -type d -exec rmdir {} + 2>/dev/null || true
	done
	;;
migrate)
	[ -e "/run/netns/$A" ] || "$0" up "$name"
	mkdir -p "$STATE/a" "$STATE/b"
	PHAUL_HOSTS=netns HOST_A=$A HOST_B=$B ADDR_B=$ADDR_B ROOT_A=$STATE/a ROOT_B=$STATE/b \
		CGROUP_ROOT=/$name SERVICE_ADDR=${SERVICE_ADDR-10.77.0.10/24} exec "$(dirname "$0")/ci-recipe.sh"
	;;
a) exec nsenter --net="/run/netns/$A" "$@" ;;
b) exec nsenter --net="/run/netns/$B" "$@" ;;
c) exec nsenter --net="/run/netns/$C" "$@" ;;
*)
	sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'
	exit 2
	;;
esac
