#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# The packaging suite: what a gateway operator gets from the .deb, checked under a real systemd.
#
#   1. builds iothubd_<version>_<arch>.deb from a copy of the source tree with
#      `dpkg-buildpackage -us -uc -b` (the package build runs the unit tests) and checks it with
#      `lintian --fail-on=warning`;
#   2. boots a Debian 12 tree (debootstrap --variant=minbase, cached per ISO week) with
#      `systemd-nspawn --register=no --keep-unit -b`; there guest_checks.sh runs as a oneshot
#      unit: installs the .deb with apt, verifies the unit (systemd-analyze verify, security),
#      gives it a connection string through /etc/credstore, starts it and drives it on the
#      container's real system bus (members, a user outside the groups listening for signals with
#      iothubd-test-peer, X.509 credentials through /etc/credstore); its exit status comes back as
#      nspawn's;
#   3. checks from the host what the hub emulator (running beside the container: the container
#      shares the host's network, the emulator listens on 127.0.0.1) received.
#
#   packaging_test.sh --source DIR --version V --plugin SO --emulator SCRIPT --guest-checks SCRIPT
#                     --peer BINARY [--deb PATH]
#
# --deb takes an already built package and skips steps 1's build and lintian (for iterating on
# the container checks; the suite as scripts/test runs it always builds).
#
# Environment: IOTHUBD_TEST_CACHE (default /var/cache/iothubd-test) keeps the root file system
# tarball and the .debs apt fetched for it between runs; IOTHUBD_PACKAGING_TMPDIR (default
# /var/tmp) is where the work directory goes (about 400 MB); IOTHUBD_KEEP_WORKDIR=1 keeps it.
# Network: only the Debian mirror and loopback. Exit 77 (meson: skipped) when not run as root.
set -euo pipefail

source_dir="" version="" plugin="" emulator="" guest_checks="" peer="" prebuilt_deb=""
while [[ $# -gt 0 ]]; do
  case $1 in
    --source) source_dir=$2; shift 2 ;;
    --version) version=$2; shift 2 ;;
    --plugin) plugin=$2; shift 2 ;;
    --emulator) emulator=$2; shift 2 ;;
    --guest-checks) guest_checks=$2; shift 2 ;;
    --peer) peer=$2; shift 2 ;;
    --deb) prebuilt_deb=$(realpath "$2"); shift 2 ;;
    *) echo "usage: $0 --source DIR --version V --plugin SO --emulator SCRIPT --guest-checks SCRIPT" >&2; exit 2 ;;
  esac
done
[[ -n $source_dir && -n $version && -n $plugin && -n $emulator && -n $guest_checks && -n $peer ]] ||
  { echo "missing arguments (see the header of $0)" >&2; exit 2; }

readonly kMirror=http://deb.debian.org/debian
readonly kSuite=bookworm
# dbus: the system bus the package needs; man-db: lets `systemd-analyze verify` check the
# unit's Documentation= man pages. Nothing else: the package's own Depends must pull the rest.
readonly kInclude=systemd,systemd-sysv,dbus,man-db
readonly kBootTimeout=600 # s; the guest's own checks give up earlier (TimeoutStartSec=480)

if [[ $(id -u) -ne 0 ]]; then
  echo "the packaging suite needs root (debootstrap, systemd-nspawn): skipped"
  exit 77
fi
for tool in dpkg-buildpackage lintian debootstrap systemd-nspawn flock openssl python3; do
  command -v "$tool" >/dev/null || { echo "FAIL: $tool is missing (scripts/test installs it)" >&2; exit 1; }
done

suite_start=$SECONDS
phase_start=$SECONDS
log() { printf '==> %s\n' "$*"; }
phase_done() {
  printf '    (%s: %d s)\n' "$1" $((SECONDS - phase_start))
  phase_start=$SECONDS
}

work=$(mktemp -d "${IOTHUBD_PACKAGING_TMPDIR:-/var/tmp}/iothubd-packaging.XXXXXX")
hub_started=false
cleanup() {
  local rc=$?
  set +e
  $hub_started && "$emulator" stop "$work/hub" >/dev/null 2>&1
  if [[ ${IOTHUBD_KEEP_WORKDIR:-0} == 1 ]]; then
    echo "work directory kept: $work"
  else
    rm -rf "$work"
  fi
  exit "$rc"
}
trap cleanup EXIT

# Prints what helps most when something failed, then fails.
fail() {
  echo "FAIL: $*" >&2
  local f
  for f in "$work/share/guest.log" "$work/share/apt.log" "$work/share/verify.err"; do
    [[ -s $f ]] && { echo "--- $f"; cat "$f"; }
  done
  [[ -s $work/share/journal.txt ]] && { echo "--- guest journal (last 150 lines)"; tail -n 150 "$work/share/journal.txt"; }
  [[ -s $work/nspawn.log ]] && { echo "--- systemd-nspawn (last 40 lines)"; tail -n 40 "$work/nspawn.log"; }
  [[ -s $work/hub/broker.log ]] && { echo "--- hub emulator log (last 40 lines)"; tail -n 40 "$work/hub/broker.log"; }
  exit 1
}

# --- 0. the unit loads every credential the code reads -------------------------------------------
# The names credentials.cpp passes next to the credentials directory, against LoadCredential=.
check_credential_list() {
  local code unit missing=()
  code=$(tr -s ' \n' ' ' <"$source_dir/src/config/credentials.cpp" |
    grep -oE '"[a-z0-9-]+", credentialsDirectory' | cut -d'"' -f2 | sort -u)
  unit=$(sed -n 's/^LoadCredential=\([a-z0-9-]*\)$/\1/p' "$source_dir/systemd/iothubd.service.in" | sort -u)
  [[ -n $code ]] || fail "found no credential names in src/config/credentials.cpp"
  local name
  for name in $code; do
    grep -qxF "$name" <<<"$unit" || missing+=("$name")
  done
  [[ ${#missing[@]} -eq 0 ]] ||
    fail "iothubd.service lacks LoadCredential= for: ${missing[*]} (iothubd reads them: credentials.cpp)"
  echo "ok   the unit loads every credential iothubd reads: $(tr '\n' ' ' <<<"$code")"
}
check_credential_list

# --- 1. the package ---------------------------------------------------------------------------
build_package() {
  log "building the .deb (dpkg-buildpackage -us -uc -b) in $work"
  # A copy, because dpkg-buildpackage writes its results next to the source tree and its build
  # tree into it.
  mkdir -p "$work/src/iothubd"
  if git -C "$source_dir" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    # Tracked and new files as they are now, without build directories or ignored files.
    (cd "$source_dir" && git ls-files -z --cached --others --exclude-standard |
      tar --null --ignore-failed-read -T - -cf -) | tar -x -C "$work/src/iothubd"
  else
    tar -C "$source_dir" --exclude=./.git --exclude='./build*' --exclude='./obj-*' -cf - . |
      tar -x -C "$work/src/iothubd"
  fi
  changelog_version=$(cd "$work/src/iothubd" && dpkg-parsechangelog -SVersion)
  [[ $changelog_version == "$version" ]] ||
    fail "debian/changelog says $changelog_version but meson.build says $version"
  (cd "$work/src/iothubd" && DEB_BUILD_OPTIONS="parallel=$(nproc)" dpkg-buildpackage -us -uc -b) \
    >"$work/build.log" 2>&1 || { tail -n 60 "$work/build.log"; fail "dpkg-buildpackage failed"; }
  arch=$(dpkg --print-architecture)
  deb=$work/src/iothubd_${version}_${arch}.deb
  [[ -f $deb ]] || fail "dpkg-buildpackage did not produce $(basename "$deb")"
  # The package build must have run the unit suite, and all of it passed.
  if ! grep -q -- 'meson test --suite unit' "$work/build.log" || ! grep -Eq '^Ok: +[1-9]' "$work/build.log" ||
    ! grep -Eq '^Fail: +0' "$work/build.log"; then
    tail -n 40 "$work/build.log"
    fail "the package build did not run and pass the unit tests"
  fi
  echo "ok   $(basename "$deb") built; its build ran the unit tests: $(grep -E '^Ok: ' "$work/build.log" | tr -s ' ')"
  phase_done "package build"

  log "lintian --fail-on=warning"
  lintian --fail-on=warning --info --pedantic "$work/src/iothubd_${version}_${arch}.changes" \
    >"$work/lintian.log" 2>&1 || { cat "$work/lintian.log"; fail "lintian reported warnings or errors"; }
  sed 's/^/    /' "$work/lintian.log"
  echo "ok   lintian: no warnings or errors"
  phase_done "lintian"
}
if [[ -n $prebuilt_deb ]]; then
  deb=$prebuilt_deb
  echo "    using $deb (--deb): no build, no lintian"
else
  build_package
fi

# --- 2. a Debian 12 tree, cached -------------------------------------------------------------
cache=${IOTHUBD_TEST_CACHE:-/var/cache/iothubd-test}
mkdir -p "$cache"
# The key changes every ISO week (fresh security updates) and with what goes into the tree.
readonly kCacheLayout=2 # bump when the tree is prepared differently
key="$kSuite-minbase-$(date -u +%G-W%V)-$(printf '%s %s %s' "$kInclude" "$kMirror" "$kCacheLayout" |
  sha256sum | cut -c1-8)"
tarball=$cache/$key.tar
debs=$cache/$key.debs
(
  # One debootstrap at a time, and never a half-written tarball: concurrent runs wait here.
  flock 9
  if [[ ! -f $tarball ]]; then
    log "debootstrap $kSuite (no cached tree $key)"
    for attempt in 1 2; do
      rm -rf "$work/bootstrap"
      if debootstrap --variant=minbase --include="$kInclude" "$kSuite" "$work/bootstrap" "$kMirror" \
        >"$work/debootstrap.log" 2>&1; then
        break
      fi
      [[ $attempt == 2 ]] && { tail -n 30 "$work/debootstrap.log"; exit 1; }
      echo "    debootstrap failed; one more try (the mirror may have been updating)"
    done
    # The base system's own .debs are not needed again (apt-get clean).
    find "$work/bootstrap/var/cache/apt/archives" -maxdepth 1 -name '*.deb' -delete
    tar --numeric-owner -C "$work/bootstrap" -cf "$tarball.partial" .
    mv "$tarball.partial" "$tarball"
    rm -rf "$work/bootstrap"
    # Older weeks' trees and their .debs are not used again.
    find "$cache" -maxdepth 1 -name "$kSuite-minbase-*" ! -name "$key.*" -exec rm -rf {} +
  fi
  mkdir -p "$debs"
) 9>"$cache/lock" || fail "debootstrap failed"
mkdir "$work/root"
tar --numeric-owner -C "$work/root" -xpf "$tarball"
# Packages fetched by earlier runs of this tree: apt takes them from its cache, not the mirror.
find "$debs" -maxdepth 1 -name '*.deb' -exec cp -t "$work/root/var/cache/apt/archives/" {} +
phase_done "root file system ($key)"

# --- 3. the hub emulator beside the container --------------------------------------------------
log "starting the hub emulator"
device_key=$(openssl rand -base64 32)
"$emulator" start "$work/hub" --plugin "$plugin" --device "dev1=$device_key" --x509 >/dev/null
hub_started=true
# shellcheck disable=SC1091 # written by hub-emulator start
source "$work/hub/env"

# What the guest needs, on a bind mount outside the container's /tmp (nspawn mounts a tmpfs there).
share=$work/share
mkdir -m 0700 "$share"
cp "$deb" "$HUB_CA" "$share/"
cp "$guest_checks" "$share/guest_checks.sh"
# A bus client the guest runs as its users (tests/integration/peer); built against the same
# Debian 12 libraries.
install -m 0755 "$peer" "$share/iothubd-test-peer"
# The device's X.509 identity, for the start through /etc/credstore/x509-cert + x509-key.
"$emulator" cert "$work/hub" dev1 "$share/x509-cert" "$share/x509-key"
(
  umask 077
  printf 'HostName=%s;DeviceId=dev1;SharedAccessKey=%s\n' "$HUB_HOST" "$device_key" >"$share/connection-string"
  cat >"$share/env" <<EOF
DEB=/iothubd-test/$(basename "$deb")
HUB_CA=/iothubd-test/$(basename "$HUB_CA")
HUB_PORT=$HUB_PORT
HUB_X509_PORT=$HUB_X509_PORT
DEVICE_KEY=$device_key
RUN_ID=$(basename "$work" | tr -cd 'A-Za-z0-9')
EOF
)
# Gateways have an /etc/hosts; debootstrap does not write one, and "localhost" must resolve. Only
# to 127.0.0.1, where the emulator listens: libmosquitto's asynchronous connect tries just the
# first address getaddrinfo() returns, so a "::1 localhost" line would make it try ::1 alone.
printf '127.0.0.1\tlocalhost\n::1\t\tip6-localhost ip6-loopback\n' >"$work/root/etc/hosts"
cat >"$work/root/etc/systemd/system/iothubd-packaging-test.service" <<'EOF'
[Unit]
Description=iothubd packaging checks (tests/packaging/guest_checks.sh)
Wants=network-online.target
After=network-online.target
# The checks' exit status becomes the container's, and so systemd-nspawn's.
SuccessAction=exit-force
FailureAction=exit-force

[Service]
Type=oneshot
ExecStart=/bin/bash /iothubd-test/guest_checks.sh
StandardOutput=append:/iothubd-test/guest.log
StandardError=inherit
TimeoutStartSec=480

[Install]
WantedBy=multi-user.target
EOF
ln -s ../iothubd-packaging-test.service \
  "$work/root/etc/systemd/system/multi-user.target.wants/iothubd-packaging-test.service"
phase_done "emulator and guest set-up"

# --- 4. boot ----------------------------------------------------------------------------------
log "booting the container (systemd-nspawn -b); the checks run inside"
boot_rc=0
timeout "$kBootTimeout" systemd-nspawn -D "$work/root" --register=no --keep-unit -b -q \
  --bind="$share:/iothubd-test" </dev/null >"$work/nspawn.log" 2>&1 || boot_rc=$?
(flock 9 && find "$work/root/var/cache/apt/archives" -maxdepth 1 -name '*.deb' \
  -exec cp -n -t "$debs/" {} +) 9>"$cache/lock" || true
[[ -s $share/guest.log ]] && sed 's/^/    /' "$share/guest.log"
[[ $boot_rc -eq 124 ]] && fail "the container did not finish within $kBootTimeout s"
[[ $boot_rc -eq 0 ]] || fail "checks inside the container failed (exit status $boot_rc)"
phase_done "container"

# --- 5. what the hub received ------------------------------------------------------------------
member_id="" outsider_id="" reload_id="" broken_id="" activated_id="" encrypted_id="" reload_product=""
x509_id=""
security_exposure=""
# shellcheck disable=SC1091 # written by guest_checks.sh
source "$share/results.env"
ledger=$("$emulator" request "$work/hub" ledger '{"device":"dev1"}')
host_failures=0
expect_ledger() {
  local what=$1 id=$2 count=$3
  if python3 - "$ledger" "$id" "$count" <<'EOF'; then
import json, sys
ledger, mid, want = json.loads(sys.argv[1]), sys.argv[2], int(sys.argv[3])
ids = ledger.get("devices", {}).get("dev1", {}).get("ids", {})
sys.exit(0 if ids.get(mid, 0) == want else 1)
EOF
    echo "ok   hub: $what"
  else
    echo "FAIL hub: $what (message id $id, ledger $ledger)"
    host_failures=$((host_failures + 1))
  fi
}
expect_ledger "received the member's message once" "$member_id" 1
expect_ledger "received nothing from the user outside iothub" "$outsider_id" 0
expect_ledger "received the message sent after the reload" "$reload_id" 1
expect_ledger "received the message sent after the broken reload" "$broken_id" 1
expect_ledger "received the message that bus-activated iothubd" "$activated_id" 1
expect_ledger "received the message sent with the encrypted credential" "$encrypted_id" 1
expect_ledger "received the message sent with the X.509 identity from /etc/credstore" "$x509_id" 1
# The reload's CONNECT carries the new keep-alive and product info (mosquitto logs both).
if grep -E "as dev1 \(p2, c[01], k45, u'[^']*${reload_product}" "$work/hub/broker.log" >/dev/null; then
  echo "ok   hub: after the reload iothubd reconnected with keep_alive 45 and the new product_info"
else
  echo "FAIL hub: no CONNECT with keep_alive 45 and product_info $reload_product"
  host_failures=$((host_failures + 1))
fi
[[ $host_failures -eq 0 ]] || fail "$host_failures check(s) on the hub side failed"
phase_done "hub-side checks"

echo "packaging suite passed in $((SECONDS - suite_start)) s (security exposure $security_exposure)"
