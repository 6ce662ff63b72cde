#!/usr/bin/env bash
# two-hosts.sh: two "hosts" on one machine, as network namespaces joined by
# a veth pair on a private /24 that exists only inside them.
#
#   two-hosts.sh up   [NAME]         create NAME-a (10.77.0.1) and NAME-b (10.77.0.2)
#   two-hosts.sh down [NAME]         remove them (and everything running in them)
#   two-hosts.sh a|b  [NAME] CMD...  run CMD on host a or b (nsenter --net;
#                                    not `ip netns exec`, which remounts /sys
#                                    and makes CRIU refuse the dump)
#   two-hosts.sh migrate [NAME]      the CI recipe of docs/ci.md on them
#                                    (scripts/ci-recipe.sh): install phaul on
#                                    both (under /tmp/phaul-two-hosts-NAME/a
#                                    and /b), start phaul-service on b and a
#                                    workload on a, migrate it, check it
#
# NAME defaults to phaul. Must run as root.
set -euo pipefail
cmd=${1:-}; shift || true
name=phaul
if [ $# -gt 0 ] && [[ "$1" != -* ]] && [ "$cmd" != a ] && [ "$cmd" != b ]; then name=$1; shift; fi
if { [ "$cmd" = a ] || [ "$cmd" = b ]; } && [ $# -gt 1 ] && [ -e "/run/netns/$1-a" ]; then name=$1; shift; fi
A=$name-a; B=$name-b
STATE=/tmp/phaul-two-hosts-$name
ADDR_A=10.77.0.1; ADDR_B=10.77.0.2

case "$cmd" in
up)
	if [ -e "/run/netns/$A" ]; then echo "two-hosts: $A exists"; exit 0; fi
	ip netns add "$A"
	ip netns add "$B"
	ip link add "${name:0:8}-va" type veth peer name "${name:0:8}-vb"
	ip link set "${name:0:8}-va" netns "$A"
	ip link set "${name:0:8}-vb" netns "$B"
	nsenter --net="/run/netns/$A" sh -c "ip link set lo up; ip addr add $ADDR_A/24 dev ${name:0:8}-va; ip link set ${name:0:8}-va up"
	nsenter --net="/run/netns/$B" sh -c "ip link set lo up; ip addr add $ADDR_B/24 dev ${name:0:8}-vb; ip link set ${name:0:8}-vb up"
	echo "two-hosts: $A ($ADDR_A) <-> $B ($ADDR_B)"
	;;
down)
	for ns in "$A" "$B"; do
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
		CGROUP_ROOT=/$name exec "$(dirname "$0")/ci-recipe.sh"
	;;
a) exec nsenter --net="/run/netns/$A" "$@" ;;
b) exec nsenter --net="/run/netns/$B" "$@" ;;
*)
	sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'
	exit 2
	;;
esac
