#!/usr/bin/env bash
# install.sh: install phaul from a build tree (`make install` runs it) or
# from the tarball `make dist` makes (run it from the unpacked directory).
#
#   scripts/install.sh [--with-criu]
#
# Installs PREFIX/bin/phaul and phaul-service, PREFIX/lib/phaul/phaul-workload
# (a demo workload: a counter, a TCP server and verifiable memory, used by the
# CI recipe of docs/ci.md), the systemd unit UNITDIR/phaul-service.service,
# and SYSCONFDIR/phaul/phaul-service.conf unless one exists (never
# overwritten). --with-criu also makes sure a CRIU that works on this kernel
# is there (scripts/install-criu.sh; needs root).
#
# Environment: PREFIX (/usr/local), DESTDIR (""), UNITDIR
# (PREFIX/lib/systemd/system), SYSCONFDIR (/etc), BIN (./bin).
set -euo pipefail
cd "$(dirname "$0")/.."
PREFIX=${PREFIX:-/usr/local}
DESTDIR=${DESTDIR:-}
UNITDIR=${UNITDIR:-$PREFIX/lib/systemd/system}
SYSCONFDIR=${SYSCONFDIR:-/etc}
BIN=${BIN:-bin}
for f in phaul phaul-service phaul-workload; do
	[ -x "$BIN/$f" ] || { echo "install: $BIN/$f missing: run make build first" >&2; exit 1; }
done
if [ "${1:-}" = --with-criu ]; then
	scripts/install-criu.sh
elif [ $# -gt 0 ]; then
	sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//' >&2
	exit 2
fi
install -d "$DESTDIR$PREFIX/bin" "$DESTDIR$PREFIX/lib/phaul" "$DESTDIR$UNITDIR" "$DESTDIR$SYSCONFDIR/phaul"
install -m 0755 "$BIN/phaul" "$BIN/phaul-service" "$DESTDIR$PREFIX/bin/"
install -m 0755 "$BIN/phaul-workload" "$DESTDIR$PREFIX/lib/phaul/"
sed "s|@BINDIR@|$PREFIX/bin|g" dist/phaul-service.service.in >"$DESTDIR$UNITDIR/phaul-service.service"
chmod 0644 "$DESTDIR$UNITDIR/phaul-service.service"
if [ ! -e "$DESTDIR$SYSCONFDIR/phaul/phaul-service.conf" ]; then
	install -m 0644 dist/phaul-service.conf "$DESTDIR$SYSCONFDIR/phaul/phaul-service.conf"
fi
