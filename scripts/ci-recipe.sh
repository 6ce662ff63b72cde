#!/usr/bin/env bash
# ci-recipe.sh: the CI recipe of docs/ci.md. Installs phaul on two hosts
# (CRIU included), shares the certificates, starts phaul-service on B,
# starts a workload on A, migrates it to B and checks the result from
# `phaul migrate --json` and `phaul status --json`. Run from the repository
# (it builds the tarball with `make dist` unless TARBALL names one).
#
# Environment:
#   PHAUL_HOSTS   ssh (default): HOST_A and HOST_B are ssh destinations
#                 (ci@a.example: root, or a user with password-less sudo),
#                 reached with SSH_OPTS; the service runs under systemd on B.
#                 netns: HOST_A and HOST_B are network namespaces on this
#                 machine (scripts/two-hosts.sh migrate sets this up, and the
#                 tests run it): the same steps, with ROOT_A and ROOT_B as
#                 the hosts' filesystem roots and the service started by hand.
#   ADDR_B        B's address as A reaches it (required)
#   TARBALL       phaul's tarball (default: made by `make dist`)
#   CGROUP_ROOT   the service's --cgroup-root (default /phaul)
#   WORKLOAD_MEM  MiB of memory the workload holds (default 64)
#   SERVICE_ADDR  an address (IP/PREFIX) on the subnet both hosts share, for
#                 the workload to serve on: put on A first, it moves with the
#                 workload (--move-address) and answers from B afterwards
set -euo pipefail
cd "$(dirname "$0")/.."
: "${HOST_A:?HOST_A: the source host}" "${HOST_B:?HOST_B: the destination host}" "${ADDR_B:?ADDR_B: the address A reaches B at}"
PHAUL_HOSTS=${PHAUL_HOSTS:-ssh}
SSH_OPTS=${SSH_OPTS:--o BatchMode=yes -o StrictHostKeyChecking=accept-new}
CGROUP_ROOT=${CGROUP_ROOT:-/phaul}
WORKLOAD_MEM=${WORKLOAD_MEM:-64}
ROOT_A=${ROOT_A:-}
SERVICE_ADDR=${SERVICE_ADDR:-}
svc=${SERVICE_ADDR%/*}
ROOT_B=${ROOT_B:-}
work=$(mktemp -d /tmp/phaul-ci.XXXXXX)
trap 'rm -rf "$work"' EXIT

say() { printf '== %s\n' "$*" >&2; }
die() { printf 'ci-recipe: FAILED: %s\n' "$*" >&2; exit 1; }

# on a|b CMD: run the shell command CMD on host A or B, as root.
on() {
	local host=$HOST_A; [ "$1" = b ] && host=$HOST_B; shift
	case $PHAUL_HOSTS in
	ssh) ssh $SSH_OPTS "$host" "sudo -n bash -c $(printf '%q' "$*")" ;;
	netns) nsenter --net="/run/netns/$host" bash -c "$*" ;;
	*) die "PHAUL_HOSTS=$PHAUL_HOSTS: want ssh or netns" ;;
	esac
}
# put a|b FILE DIR: copy FILE (or directory) into DIR on host A or B.
put() {
	local host=$HOST_A; [ "$1" = b ] && host=$HOST_B
	case $PHAUL_HOSTS in
	ssh)
		local tmp=/tmp/phaul-put-$$
		ssh $SSH_OPTS "$host" "rm -rf $tmp && mkdir $tmp"
		scp $SSH_OPTS -q -r "$2" "$host:$tmp/"
		on "$1" "mkdir -p '$3' && cp -r $tmp/* '$3/' && rm -rf $tmp" ;;
	netns) mkdir -p "$3" && cp -r "$2" "$3/" ;;
	esac
}
root() { if [ "$1" = a ]; then echo "$ROOT_A"; else echo "$ROOT_B"; fi; }

# 1. A tarball of phaul, installed on both hosts with its CRIU.
if [ -z "${TARBALL:-}" ]; then
	say "make dist"
	TARBALL=$(make -s dist | tail -n1)
fi
command -v jq >/dev/null || apt-get install -y -qq jq >/dev/null
for h in a b; do
	r=$(root $h)
	say "install phaul on $h"
	on $h "rm -rf '$r/tmp/phaul-install' && mkdir -p '$r/tmp/phaul-install'"
	put $h "$TARBALL" "$r/tmp/phaul-install"
	on $h "cd '$r/tmp/phaul-install' && tar xzf phaul-*.tar.gz && cd phaul-*/ &&
		PREFIX='$r/usr/local' SYSCONFDIR='$r/etc' ./scripts/install.sh --with-criu >/dev/null"
done
BIN_A=$ROOT_A/usr/local/bin

# 2. One CA and its certificates, shared by both hosts.
say "certificates"
tar xzf "$TARBALL" -C "$work" --wildcards '*/bin/phaul'
"$work"/phaul-*/bin/phaul certs "$work/tls" >/dev/null
for h in a b; do put $h "$work/tls" "$(root $h)/etc/phaul"; done

# 3. phaul-service on B.
say "phaul-service on b"
on b "cat > '$ROOT_B/etc/phaul/phaul-service.conf' <<EOF
listen = 0.0.0.0:7070
tls-dir = $ROOT_B/etc/phaul/tls
cgroup-root = $CGROUP_ROOT
EOF"
case $PHAUL_HOSTS in
ssh) on b "systemctl daemon-reload && systemctl enable --now phaul-service && systemctl is-active phaul-service" ;;
netns) on b "mkdir -p '$ROOT_B/var/lib/phaul' '$ROOT_B/var/log/phaul'; cd /; setsid '$ROOT_B/usr/local/bin/phaul-service' \
		--config '$ROOT_B/etc/phaul/phaul-service.conf' --work-dir '$ROOT_B/var/lib/phaul' --log-dir '$ROOT_B/var/log/phaul' \
		</dev/null >'$ROOT_B/var/log/phaul/service.log' 2>&1 & echo \$! > '$ROOT_B/phaul-service.pid'" ;;
esac
status() { on a "'$BIN_A/phaul' status --json --tls-dir '$ROOT_A/etc/phaul/tls' $ADDR_B:7070"; }
for i in $(seq 100); do
	status >/dev/null 2>&1 && break
	[ "$i" = 100 ] && die "phaul-service on b does not answer phaul status"
	sleep 0.2
done

# (`cd /;` then `CMD &`: with `cd / && CMD &` a subshell would hold the
# output of `on` open until CMD ends.)
# 4. A workload on A: a counter, a TCP server on port 9000 holding a token,
# and memory it can check. In its own session (setsid), as a service would
# be; with netns hosts also in a PID namespace of its own, so that its PIDs
# are free for the restore on this same machine.
# With SERVICE_ADDR it serves on that address only, which A holds on the
# interface of its subnet.
say "workload on a"
listen=0.0.0.0 here=127.0.0.1
if [ -n "$SERVICE_ADDR" ]; then
	on a "ip addr add $SERVICE_ADDR dev \$(ip route get $svc | sed -n 's/.* dev \([^ ]*\).*/\1/p')"
	listen=$svc here=$svc
fi
wrap=; [ "$PHAUL_HOSTS" = netns ] && wrap="unshare -p -f setsid"
pid=$(on a "cd /; setsid $wrap '$ROOT_A/usr/local/lib/phaul/phaul-workload' --state '$ROOT_A/tmp/phaul-ci-workload' \
	--listen $listen:9000 --mem $WORKLOAD_MEM </dev/null >/dev/null 2>&1 & echo \$!")
[ -n "$wrap" ] && { sleep 0.3; pid=$(on a "pgrep -P $pid"); }
ask() { on a "exec 3<>/dev/tcp/$1/9000 && echo $2 >&3 && timeout 10 head -n1 <&3"; }
for i in $(seq 100); do
	before=$(ask $here GET 2>/dev/null) && break
	[ "$i" = 100 ] && die "the workload on a does not answer"
	sleep 0.1
done
say "pid $pid on a answers: $before"

# 5. Migrate, then check the result.
move=; [ -n "$SERVICE_ADDR" ] && move="--move-address $svc"
say "phaul migrate $move $pid $ADDR_B:7070"
code=0
# --retry-transient: a task caught in uninterruptible sleep (D) at the
# checks is a transient failure (exit 5); phaul waits and checks again.
on a "'$BIN_A/phaul' migrate --json --retry-transient 3 --tls-dir '$ROOT_A/etc/phaul/tls' $move $pid $ADDR_B:7070" >"$work/result.json" || code=$?
jq -c '{outcome, id, dest_pid, downtime, page_bytes, wire_bytes}' "$work/result.json" >&2 || die "phaul migrate printed no JSON (exit $code)"
[ "$code" = 0 ] || die "phaul migrate exited $code: $(jq -r .error "$work/result.json"); failed checks: $(jq -c '[.verdicts[] | select(.result == "fail")]' "$work/result.json")"
[ "$(jq -r '.outcome, .committed, .running' "$work/result.json" | tr '\n' ' ')" = "ok true true " ] || die "not migrated"
id=$(jq -r .id "$work/result.json")
dest_pid=$(jq -r .dest_pid "$work/result.json")
on a "! kill -0 $pid 2>/dev/null" || die "pid $pid still runs on a"
on b "kill -0 $dest_pid" || die "pid $dest_pid does not run on b"
there=$ADDR_B
if [ -n "$SERVICE_ADDR" ]; then
	# The address answers from b now, and a holds it no more.
	on b "ip -o addr show | grep -q ' $SERVICE_ADDR '" || die "b does not hold $SERVICE_ADDR"
	on a "! ip -o addr show | grep -q ' $SERVICE_ADDR '" || die "a still holds $SERVICE_ADDR"
	say "$SERVICE_ADDR moved: $(jq -c .addresses "$work/result.json")"
	there=$svc
fi
after=$(ask "$there" GET) || die "the workload does not answer on b"
[ "$(echo "$after" | cut -d' ' -f2)" = "$(echo "$before" | cut -d' ' -f2)" ] || die "another token on b: $after (before: $before)"
sum=$(ask "$there" SUM)
case $sum in sum=ok*) ;; *) die "memory check on b: $sum" ;; esac
state=$(status | jq -r --arg id "$id" '.migrations[] | select(.id == $id) | .state')
[ "$state" = done ] || die "phaul status on b says $id is '$state', not done"
say "migrated: pid $pid on a is pid $dest_pid on b (migration $id, downtime $(jq .downtime "$work/result.json") s); same token, memory ok"
