# SPDX-License-Identifier: MIT
# Shared by scripts/test, scripts/bench and scripts/demo: install what a fresh Debian 12 machine
# lacks, create the service accounts the D-Bus policy names, and build. Source it; it defines
# functions only.

# Everything the build, the tests and the demo use, by Debian 12 package name.
IOTHUBD_PACKAGES=(
  # toolchain and build
  g++ pkg-config meson ninja-build
  # libraries (see meson.build)
  libsdbus-c++-dev libsdbus-c++-bin libmosquitto-dev libssl-dev rapidjson-dev libsystemd-dev
  libexpected-dev libinih-dev libgtest-dev libgmock-dev libcurl4-openssl-dev libsqlite3-dev
  # hub emulator: broker, plugin headers, clients, PKI
  mosquitto mosquitto-dev mosquitto-clients openssl
  # private system bus and busctl
  dbus systemd
  # file-upload emulator (Azurite itself comes from npm: ensure_test_node_modules) and the curl
  # CLI for the upload benchmark
  curl
  # helpers used by the harness scripts
  python3 procps util-linux passwd acl
  # the Python example app (examples/iothubd_app.py), which the tests run
  python3-dbus python3-gi
  # iothubctl's bash completion test (shell-completion/)
  bash-completion
  # packaging suite: build and check the .deb, boot it in a Debian 12 container
  build-essential fakeroot dpkg-dev debhelper lintian debootstrap systemd-container git
  # connectivity tests (tests/integration/netns_test.cpp): HTTP and SOCKS proxies, and the
  # firewall rules that keep the hub reachable only through them
  tinyproxy-bin dante-server iptables
  # network-watch tests: the veth link the real systemd-networkd (package systemd) manages
  iproute2
  # fuzzing (libFuzzer runtime), symbolized sanitizer reports, scripts/lint
  clang libclang-rt-14-dev llvm clang-format clang-tidy
)

# Each line carries the seconds since the script started, so a CI log shows where the time goes.
log() { printf '==> [%4ds] %s\n' "$SECONDS" "$*"; }

die() {
  printf 'error: %s\n' "$*" >&2
  exit 1
}

as_root() {
  if [[ $(id -u) -eq 0 ]]; then
    "$@"
  elif command -v sudo >/dev/null; then
    sudo "$@"
  else
    die "need root to run: $* (run this script as root)"
  fi
}

ensure_packages() {
  local -a missing=()
  local p
  for p in "${IOTHUBD_PACKAGES[@]}" "$@"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed'; then
      missing+=("$p")
    fi
  done
  if [[ ${#missing[@]} -eq 0 ]]; then
    return 0
  fi
  log "installing ${missing[*]}"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
}

# The bus policy (dbus/org.iothubd.conf) lets only user "iothubd" own org.iothubd, members of
# group "iothub" call it and members of "iothub-admin" also supply credentials; the package's
# sysusers file creates the same accounts.
ensure_service_user() {
  local group
  for group in iothub iothub-admin; do
    getent group "$group" >/dev/null || as_root groupadd --system "$group"
  done
  if ! getent passwd iothubd >/dev/null; then
    as_root useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin iothubd
  fi
}

# The callers of the trust-boundary tests (tests/integration/trust_test.cpp): a member of
# iothub, a member of iothub-admin and a user in neither group. The tests create them too when
# run without this script.
ensure_test_users() {
  local user groups
  for user in iothubd-test-member:iothub iothubd-test-admin:iothub-admin iothubd-test-outsider:; do
    groups=${user#*:}
    user=${user%%:*}
    getent passwd "$user" >/dev/null && continue
    as_root useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin \
      ${groups:+--groups "$groups"} "$user"
  done
}

# The tests and the demo run the freshly built daemon as user iothubd, so that user must be able
# to reach it: a checkout under /root or in a `mktemp -d` directory (mode 0700) is not. Each
# directory on the way that iothubd cannot traverse gets an ACL entry letting that one user
# traverse it (not list or read it); nothing else changes.
ensure_service_user_can_reach() {
  local path part dir=""
  path=$(realpath "$1")
  local -a parts
  IFS=/ read -ra parts <<<"${path#/}"
  # From / down, so that only the directories that really stop iothubd get an entry.
  for part in "" "${parts[@]}"; do
    dir=${dir%/}/$part
    if ! as_root runuser -u iothubd -- test -x "$dir"; then
      log "letting user iothubd traverse $dir (setfacl -m u:iothubd:x)"
      as_root setfacl -m u:iothubd:x "$dir"
    fi
  done
}

# ensure_node_modules DIR CHECK: the npm packages pinned in DIR/package.json + package-lock.json.
# `npm ci` runs when DIR/node_modules/CHECK is missing or node_modules was installed from another
# lock file.
ensure_node_modules() {
  local dir=$1 check=$2 lock_sum
  local stamp=$dir/node_modules/.iothubd-lock.sha256
  lock_sum=$(sha256sum "$dir/package-lock.json" | cut -d' ' -f1)
  if [[ -e $dir/node_modules/$check && -f $stamp && $(cat "$stamp") == "$lock_sum" ]]; then
    return 0
  fi
  # Debian's nodejs + npm, unless a node that brings its own npm is already there.
  command -v npm >/dev/null || ensure_packages nodejs npm
  log "installing from $dir/package-lock.json (npm ci)"
  # --ignore-scripts: nothing but the locked packages' files; none of ours needs an install step.
  (cd "$dir" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error) ||
    die "npm ci in $dir failed"
  printf '%s\n' "$lock_sum" >"$stamp"
}

# Azurite for the file-upload tests (tests/package.json).
ensure_test_node_modules() { ensure_node_modules tests .bin/azurite-blob; }

# setup_build_dir DIR [meson options...]: configures DIR, or reconfigures it with these options.
setup_build_dir() {
  local dir=$1
  shift
  if [[ -f "$dir/build.ninja" ]]; then
    meson setup --reconfigure "$dir" "$@" >/dev/null
  else
    meson setup "$dir" "$@" >/dev/null
  fi
}

# build DIR [meson options...]
build_project() {
  local dir=$1
  shift
  setup_build_dir "$dir" "$@"
  meson compile -C "$dir"
}
