#!/usr/bin/env bash
# install-criu.sh: make sure a CRIU that works on the running kernel is
# available to phaul. Idempotent; a second run takes seconds.
#
# Order: $PHAUL_CRIU if set; else a CRIU already installed under $PREFIX;
# else the system's criu if it is new enough and `criu check` passes; else,
# on Debian/amd64, CRIU 4.2.x and its libraries are fetched from Debian's
# forky suite through a private apt configuration (the system's apt sources
# and package database are never touched), unpacked into $PREFIX and run
# through the unpacked C library's own loader by the wrapper $PREFIX/bin/criu.
#
# Environment: PHAUL_CRIU_PREFIX (default /opt/phaul/criu),
# PHAUL_CRIU_SUITE (default forky), PHAUL_DEBIAN_MIRROR
# (default http://deb.debian.org/debian).
set -euo pipefail

PREFIX=${PHAUL_CRIU_PREFIX:-/opt/phaul/criu}
SUITE=${PHAUL_CRIU_SUITE:-forky}
MIRROR=${PHAUL_DEBIAN_MIRROR:-http://deb.debian.org/debian}

say() { printf 'install-criu: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (CRIU needs root to check and to run); try: sudo make deps"

# The oldest CRIU that works on this kernel (see criu/kernel.go).
kernel=$(uname -r)
kmaj=${kernel%%.*}; krest=${kernel#*.}; kmin=${krest%%[!0-9]*}
if [ "$kmaj" -gt 6 ] || { [ "$kmaj" = 6 ] && [ "$kmin" -ge 16 ]; }; then
	need=4.2; why="Linux >= 6.16: older CRIU cannot dump INET sockets (Can't get 1:16 opt)"
elif [ "$kmaj" = 6 ] && [ "$kmin" -ge 13 ]; then
	need=4.1; why="Linux >= 6.13: older CRIU does not know [vvar_vclock]"
else
	need=3.17; why="phaul needs CRIU's RPC features of 3.17"
fi

# version_ge A B: A >= B, for dotted versions.
version_ge() { [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n1)" = "$2" ]; }

# usable PATH: PATH is a CRIU new enough for this kernel whose check passes.
usable() {
	local bin=$1 out v
	[ -x "$bin" ] || return 1
	out=$("$bin" --version 2>&1) || return 1
	v=$(printf '%s\n' "$out" | sed -n 's/^Version: *\([0-9.]*\).*/\1/p' | head -n1)
	[ -n "$v" ] || return 1
	if ! version_ge "$v" "$need"; then
		say "$bin is CRIU $v; Linux $kernel needs >= $need ($why)"
		return 1
	fi
	if ! "$bin" check >/dev/null 2>&1; then
		say "$bin (CRIU $v): 'criu check' fails"
		return 1
	fi
	say "using $bin (CRIU $v)"
	return 0
}

if [ -n "${PHAUL_CRIU:-}" ]; then
	usable "$PHAUL_CRIU" && exit 0
	die "PHAUL_CRIU=$PHAUL_CRIU is not usable (see above); unset it or point it at CRIU >= $need"
fi
usable "$PREFIX/bin/criu" && exit 0
if sys=$(command -v criu 2>/dev/null) && usable "$sys"; then exit 0; fi

# Fetch from Debian.
arch=$(dpkg --print-architecture 2>/dev/null || true)
if ! command -v apt-get >/dev/null || [ "$arch" != amd64 ]; then
	die "no usable CRIU (>= $need for Linux $kernel) and this is not Debian/amd64, so phaul cannot fetch one; install CRIU >= $need from your distribution (or build it from https://criu.org) and set PHAUL_CRIU=/path/to/criu"
fi
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
[ -r "$keyring" ] || die "$keyring missing; install the debian-archive-keyring package"

work=$(mktemp -d /tmp/phaul-criu.XXXXXX)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/lists/partial" "$work/cache/archives/partial" "$work/debs" "$work/root"
echo "deb [signed-by=$keyring] $MIRROR $SUITE main" >"$work/sources.list"
apt_opts=(
	-o "Dir::Etc::SourceList=$work/sources.list"
	-o Dir::Etc::SourceParts=/nonexistent
	-o "Dir::State::Lists=$work/lists"
	-o "Dir::Cache=$work/cache"
	-o "APT::Default-Release=$SUITE"
	-o Acquire::Languages=none
	-o "Debug::NoLocking=1"
)
say "fetching the $SUITE package lists from $MIRROR"
apt-get "${apt_opts[@]}" -qq update >"$work/apt.log" 2>&1 || { cat "$work/apt.log" >&2; die "apt-get update of $SUITE failed"; }
pkgs=$(apt-cache "${apt_opts[@]}" depends --recurse --no-recommends --no-suggests \
	--no-conflicts --no-breaks --no-replaces --no-enhances criu | grep -v '^ ' | grep -v '^<' | sort -u)
[ -n "$pkgs" ] || die "could not list the packages criu needs in $SUITE"
say "downloading criu and $(($(echo "$pkgs" | wc -l) - 1)) libraries"
# apt-get download writes into the current directory; _apt cannot write
# into our private one, hence the sandbox user override.
(cd "$work/debs" && apt-get "${apt_opts[@]}" -o APT::Sandbox::User=root -qq download $pkgs) >"$work/apt.log" 2>&1 ||
	{ cat "$work/apt.log" >&2; die "apt-get download failed"; }
for deb in "$work"/debs/*.deb; do dpkg -x "$deb" "$work/root"; done

libs="\$P/usr/lib/x86_64-linux-gnu:\$P/lib/x86_64-linux-gnu"
mkdir -p "$work/root/bin"
cat >"$work/root/bin/criu" <<WRAP
#!/bin/sh
# CRIU from Debian $SUITE, run through its own C library (installed by phaul's
# scripts/install-criu.sh; the system's libraries are not touched).
P=$PREFIX
exec "\$P/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2" --library-path "$libs" "\$P/usr/sbin/criu" "\$@"
WRAP
chmod 755 "$work/root/bin/criu"
(cd "$work/debs" && ls *.deb) >"$work/root/PACKAGES"

mkdir -p "$(dirname "$PREFIX")"
rm -rf "$PREFIX.new" "$PREFIX.old"
mv "$work/root" "$PREFIX.new"
[ -e "$PREFIX" ] && mv "$PREFIX" "$PREFIX.old"
mv "$PREFIX.new" "$PREFIX"
rm -rf "$PREFIX.old"
usable "$PREFIX/bin/criu" || die "the CRIU unpacked into $PREFIX does not work (see above)"
