#!/bin/bash
# SPDX-License-Identifier: MIT
# Runs as a oneshot unit inside the booted Debian 12 container (see packaging_test.sh), as root:
# installs the .deb and sets it up the way README's "Install on a gateway" says, then checks
# iothubd.service on the container's real systemd and system bus. One "ok"/"FAIL" line per
# check on stdout; exit status 1 if any failed (the host gets it as nspawn's exit status).
# Facts for the host's own checks (message ids, product info) go to results.env.
# Most checks are small functions handed to check(), which shellcheck cannot follow.
# shellcheck disable=SC2317
# pipefail: a pipeline into `grep -q` would fail whenever grep exits before the writer (SIGPIPE);
# pipelines below end in a grep that reads all its input instead.
set -uo pipefail
export DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8

readonly share=/iothubd-test
# shellcheck disable=SC1091 # written by packaging_test.sh: DEB HUB_CA HUB_PORT DEVICE_KEY RUN_ID
source "$share/env"
readonly results=$share/results.env
readonly unit=iothubd.service
readonly bus_call=(busctl call org.iothubd /org/iothubd/Device org.iothubd.Device1)
: >"$results"
failures=0

ok() { echo "ok   $*"; }
bad() {
  echo "FAIL $*"
  failures=$((failures + 1))
}
check() {
  local name=$1
  shift
  if "$@"; then ok "$name"; else bad "$name"; fi
}
finish() {
  journalctl -b --no-pager -o short-precise >"$share/journal.txt" 2>&1
  echo "failures=$failures" >>"$results"
  exit $((failures > 0 ? 1 : 0))
}
# A failed prerequisite makes the later checks meaningless.
require() {
  local name=$1
  shift
  if "$@"; then
    ok "$name"
  else
    bad "$name"
    finish
  fi
}
result() { echo "$1=$2" >>"$results"; }
prop() { systemctl show -p "$1" --value "$unit"; }

# Bounded polling (100 x 0.1 s) for what systemd exposes only as a unit property, with no event
# this script could wait on.
await() {
  local i
  for ((i = 0; i < 100; i++)); do
    "$@" && return 0
    sleep 0.1
  done
  return 1
}

journal_cursor() { journalctl -u "$unit" -n 1 --show-cursor -o cat | sed -n 's/^-- cursor: //p'; }
# Waits (at most 20 s) for a line of iothubd's containing TEXT after CURSOR: follows the journal,
# so it returns as soon as the line is written.
await_journal() {
  local cursor=$1 text=$2 rc=0 pid
  coproc follow { exec timeout 20 journalctl -u "$unit" --after-cursor="$cursor" -f -o cat; }
  # bash unsets follow_PID as soon as the coprocess ends: keep it.
  # shellcheck disable=SC2154 # set by coproc
  pid=$follow_PID
  grep -m1 -qF -- "$text" <&"${follow[0]}" || rc=1
  kill "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
  return "$rc"
}

as_user() {
  local user=$1
  shift
  setpriv --reuid="$user" --regid="$user" --init-groups -- "$@"
}
# Bus clients of ours (iothubd-test-peer from tests/integration/peer), one process per user, driven
# through a FIFO with one JSON command per line; what they receive goes to $peers/NAME.out.
readonly peers=/run/iothubd-peers
readonly peer_bin=/usr/local/bin/iothubd-test-peer
peer_start() {
  local name=$1 user=$2 fd
  mkfifo "$peers/$name.in"
  as_user "$user" "$peer_bin" unix:path=/run/dbus/system_bus_socket \
    <"$peers/$name.in" >"$peers/$name.out" 2>"$peers/$name.err" &
  exec {fd}>"$peers/$name.in"
  printf -v "peer_fd_$name" '%s' "$fd"
}
peer_send() {
  local fd_var=peer_fd_$1
  printf '%s\n' "$2" >&"${!fd_var}"
}
# Waits (at most 10 s) for TEXT in what peer NAME printed.
peer_saw() {
  local i
  for ((i = 0; i < 100; i++)); do
    grep -qF -- "$2" "$peers/$1.out" && return 0
    sleep 0.1
  done
  return 1
}
peer_stop() {
  local fd_var=peer_fd_$1
  local fd=${!fd_var}
  exec {fd}>&-
}

# send_as USER MESSAGE-ID BODY: SendMessage with a message id the host looks up in the ledger.
send_as() { as_user "$1" "${bus_call[@]}" SendMessage 'sa{ss}a{ss}' "$3" 1 check packaging 1 message-id "$2"; }
sends_as() {
  local out
  if out=$(send_as "$@" 2>&1) && [[ $out == "s \"$2\"" ]]; then
    return 0
  fi
  echo "    busctl: $out"
  return 1
}

# --- installation, as in the README ------------------------------------------------------------
install_package() {
  # The tree's package lists come from debootstrap; if a point release replaced a version since,
  # the download fails once and fresh lists fix it.
  apt-get install -y -q "$DEB" >"$share/apt.log" 2>&1 ||
    { apt-get update -q >>"$share/apt.log" 2>&1 && apt-get install -y -q "$DEB" >>"$share/apt.log" 2>&1; }
}
require "apt-get install ./$(basename "$DEB") (dependencies from the mirror)" install_package

has_account() { getent "$1" "$2" >/dev/null; }
check "sysusers created user iothubd" has_account passwd iothubd
check "... and group iothub" has_account group iothub
check "... and group iothub-admin" has_account group iothub-admin
check "the unit is installed disabled (it needs a credential first)" \
  test "$(systemctl is-enabled "$unit")" = disabled
check "the unit did not start at installation" test "$(systemctl is-active "$unit")" = inactive
is_conffile() { dpkg-query -W -f='${Conffiles}\n' iothubd | grep '^ /etc/iothubd/iothubd.conf ' >/dev/null; }
check "/etc/iothubd/iothubd.conf is a conffile" is_conffile
check "D-Bus policy installed" test -f /usr/share/dbus-1/system.d/org.iothubd.conf
check "D-Bus activation file installed" test -f /usr/share/dbus-1/system-services/org.iothubd.service
has_man_pages() {
  man -w 8 iothubd >/dev/null && man -w 5 iothubd.conf >/dev/null && man -w 1 iothubctl >/dev/null &&
    man -w 5 org.iothubd.Device1 >/dev/null
}
check "man pages iothubd(8), iothubd.conf(5), iothubctl(1), org.iothubd.Device1(5)" has_man_pages
check "the interface XML in /usr/share/dbus-1/interfaces" \
  test -f /usr/share/dbus-1/interfaces/org.iothubd.Device1.xml
check "iothubctl and its bash completion installed" \
  test -x /usr/bin/iothubctl -a -f /usr/share/bash-completion/completions/iothubctl
has_docs() {
  local d=/usr/share/doc/iothubd
  ls $d/README.md* $d/NEWS.md* $d/changelog.gz $d/examples/iothubd.conf* >/dev/null
}
check "README, NEWS, changelog and the example configuration in /usr/share/doc/iothubd" has_docs

verify_unit() {
  systemd-analyze verify "$unit" >/dev/null 2>"$share/verify.err" && [[ ! -s $share/verify.err ]]
}
check "systemd-analyze verify $unit: status 0 and nothing on stderr" verify_unit
security() {
  # --threshold is on a 0-100 scale: 20 means an exposure of 2.0.
  systemd-analyze security --offline=yes --threshold=20 /lib/systemd/system/$unit \
    >"$share/security.txt" 2>&1
}
security
security_rc=$?
exposure=$(sed -n 's/.*Overall exposure level for iothubd.service: \([0-9.]*\).*/\1/p' "$share/security.txt")
result security_exposure "$exposure"
check "systemd-analyze security --offline=yes: exposure $exposure <= 2.0" test "$security_rc" -eq 0
check "the unit has LimitCORE=0 and MemoryMax=256M" \
  test "$(prop LimitCORE)/$(prop MemoryMax)" = "0/268435456"

install -d -m 0700 /etc/credstore
install -m 0600 "$share/connection-string" /etc/credstore/connection-string
install -m 0644 "$HUB_CA" /etc/iothubd/hub-ca.pem
mkdir -p /etc/iothubd/iothubd.conf.d
cat >/etc/iothubd/iothubd.conf.d/50-gateway.conf <<EOF
[hub]
port = $HUB_PORT
[connection]
server_verification_cert = /etc/iothubd/hub-ca.pem
EOF
check "iothubd --check-config accepts the configuration and the credential store" \
  env CREDENTIALS_DIRECTORY=/etc/credstore /usr/libexec/iothubd --check-config

# Bus activation goes through dbus-org.iothubd.service, which exists only while the unit is
# enabled: no caller, a member of iothub or anyone else, starts the disabled service.
useradd --system --no-create-home --groups iothub pkgtest-app
useradd --system --no-create-home pkgtest-outsider
not_activated() {
  local out
  if out=$(as_user "$1" "${bus_call[@]}" SendMessage 'sa{ss}a{ss}' '{"check":"disabled"}' 0 0 2>&1); then
    echo "    busctl succeeded: $out"
    return 1
  fi
  [[ $(systemctl is-active "$unit") == inactive ]] || { echo "    $unit started: $out"; return 1; }
}
check "a call from a member of iothub does not start the disabled unit" not_activated pkgtest-app
pinged_not_activated() {
  ! as_user pkgtest-outsider busctl call org.iothubd /org/iothubd/Device org.freedesktop.DBus.Peer \
    Ping >/dev/null 2>&1 && [[ $(systemctl is-active "$unit") == inactive ]]
}
check "... nor a Ping from anyone else" pinged_not_activated
ctl_not_running() {
  local rc=0
  as_user pkgtest-app iothubctl status >/dev/null 2>&1 || rc=$?
  [[ $rc == 69 ]] || { echo "    iothubctl status exited $rc"; return 1; }
}
check "iothubctl status: 69 while iothubd is not running" ctl_not_running

# Type=notify: this returns only after READY=1 (or fails).
require "systemctl enable --now $unit" systemctl enable --now "$unit"
check "enabling links the bus activation alias dbus-org.iothubd.service" \
  test "$(readlink /etc/systemd/system/dbus-org.iothubd.service)" = /lib/systemd/system/$unit

# --- 1. active, as iothubd, READY came -------------------------------------------------------
main_pid=$(prop MainPID)
check "ActiveState=active SubState=running (READY=1 came)" \
  test "$(prop ActiveState)/$(prop SubState)" = active/running
check "User=iothubd" test "$(prop User)" = iothubd
uid=$(id -u iothubd)
runs_as_iothubd() { [[ $(awk '/^Uid:/ { print $2, $3, $4, $5 }' "/proc/$main_pid/status") == "$uid $uid $uid $uid" ]]; }
check "main process $main_pid runs with the uid of iothubd (/proc/PID/status)" runs_as_iothubd
status_connected() { [[ $(prop StatusText) == "connected to localhost as dev1" ]]; }
check "StatusText becomes \"connected to localhost as dev1\"" await status_connected
check "the credential came from /etc/credstore through LoadCredential=" \
  test -f /run/credentials/$unit/connection-string
not_dumpable() { [[ $(stat -c %U "/proc/$main_pid/environ") == root ]]; }
check "PR_SET_DUMPABLE 0: /proc/$main_pid belongs to root, not iothubd" not_dumpable

# --- 2. a member of iothub can send ------------------------------------------------------------
member_id=pkgtest-member-$RUN_ID
result member_id "$member_id"
check "SendMessage as a member of group iothub returns the message id" \
  sends_as pkgtest-app "$member_id" '{"check":"member"}'
connected_prop() { [[ $(as_user pkgtest-app busctl get-property org.iothubd /org/iothubd/Device org.iothubd.Device1 Connected) == "b true" ]]; }
check "a member reads Connected = true" connected_prop
ctl_status() {
  local out
  out=$(as_user pkgtest-app iothubctl status) && grep -q '^     State: connected$' <<<"$out" ||
    { echo "    iothubctl status: $out"; return 1; }
}
check "iothubctl status as a member: connected, exit status 0" ctl_status
ctl_check() {
  # As root, with the running service's credentials; the clock check can only warn here (the
  # emulator serves no HTTPS) and group iothub-admin may be missing: warnings, no error.
  iothubctl check >"$share/check.txt" 2>&1 || { sed 's/^/    /' "$share/check.txt"; return 1; }
  local id
  for id in configuration credentials tls-settings dns tcp tls expiry daemon outbox bus-policy; do
    grep -Eq "^ok +$id " "$share/check.txt" || { echo "    not ok: $id"; sed 's/^/    /' "$share/check.txt"; return 1; }
  done
}
check "iothubctl check as root: no error; configuration to bus policy ok" ctl_check

# --- 3. anyone else is refused by the bus ------------------------------------------------------
outsider_id=pkgtest-outsider-$RUN_ID
result outsider_id "$outsider_id"
refused_by_bus() {
  local out
  if out=$(send_as pkgtest-outsider "$outsider_id" '{"check":"outsider"}' 2>&1); then
    echo "    busctl succeeded: $out"
    return 1
  fi
  grep -q 'Access denied' <<<"$out" || { echo "    busctl: $out"; return 1; }
}
check "SendMessage as a user outside iothub is refused" refused_by_bus
# busctl shows only "Access denied"; dbus-send names the error and quotes the bus's policy check.
access_denied() {
  local out
  out=$(as_user pkgtest-outsider dbus-send --system --print-reply --dest=org.iothubd \
    /org/iothubd/Device org.iothubd.Device1.SendMessage 'string:{"check":"outsider"}' \
    dict:string:string:check,packaging dict:string:string:message-id,"$outsider_id" 2>&1)
  grep -q '^Error org.freedesktop.DBus.Error.AccessDenied: Rejected send message' <<<"$out" ||
    { echo "    dbus-send: $out"; return 1; }
}
check "... by the bus policy: org.freedesktop.DBus.Error.AccessDenied, Rejected send message" access_denied
property_denied() { ! as_user pkgtest-outsider busctl get-property org.iothubd /org/iothubd/Device org.iothubd.Device1 Connected >/dev/null 2>&1; }
check "... and may not read properties" property_denied
introspectable() {
  as_user pkgtest-outsider busctl call org.iothubd /org/iothubd/Device \
    org.freedesktop.DBus.Introspectable Introspect | grep 'method name=\\"SendMessage\\"' >/dev/null
}
check "introspection stays open to everyone" introspectable

# --- 3b. credentials only from root and iothub-admin ------------------------------------------
useradd --system --no-create-home --groups iothub-admin pkgtest-admin
# update_token_as USER ERROR: UpdateSasToken fails with ERROR (dbus-send names it; the call fails,
# so its output is captured before grep, not piped: pipefail).
update_token_as() {
  local out
  out=$(as_user "$1" dbus-send --system --print-reply --dest=org.iothubd /org/iothubd/Device \
    org.iothubd.Device1.UpdateSasToken 'string:SharedAccessSignature sr=x&sig=y&se=1' 2>&1)
  grep -q "^Error $2" <<<"$out" || { echo "    dbus-send: $out"; return 1; }
}
member_refused_token() { update_token_as pkgtest-app org.freedesktop.DBus.Error.AccessDenied; }
check "UpdateSasToken as a member of iothub: AccessDenied by the bus" member_refused_token
# Past the bus and the daemon's own check: this device has a key, so there is nothing to update.
admin_passes() { update_token_as pkgtest-admin org.iothubd.Error.NotSupported; }
check "UpdateSasToken as a member of iothub-admin gets through (NotSupported for a key)" admin_passes

# --- 3c. who hears what: a user outside the groups listens with match rules --------------------
install -d -m 0755 "$peers"
install -m 0755 "$share/iothubd-test-peer" "$peer_bin"
peer_start outsider pkgtest-outsider
peer_start member pkgtest-app
peer_send outsider '{"id":1,"op":"match","rule":"sender='"'"'org.iothubd'"'"'"}'
peer_send outsider '{"id":2,"op":"match","rule":"type='"'"'signal'"'"'"}'
peer_send outsider '{"id":3,"op":"match","rule":"eavesdrop=true,sender='"'"'org.iothubd'"'"'"}'
peer_send member '{"id":1,"op":"match","rule":"sender='"'"'org.iothubd'"'"'"}'
check "the bus takes the outsider's match rules on org.iothubd and on every signal" \
  peer_saw outsider '{"id":2,"reply":[]}'

# --- 4. reload ----------------------------------------------------------------------------------
reload_product=pkgtest-reload-$RUN_ID
result reload_product "$reload_product"
cursor=$(journal_cursor)
printf '[connection]\nkeep_alive = 45\nproduct_info = %s\n' "$reload_product" \
  >/etc/iothubd/iothubd.conf.d/60-reload.conf
check "systemctl reload $unit after a change" systemctl reload "$unit"
check "iothubd applies it and reconnects" \
  await_journal "$cursor" "configuration reloaded from /etc/iothubd/iothubd.conf; reconnecting to apply it"
check "... and is connected again" await_journal "$cursor" "connected to localhost as dev1"
check "... in the same process (MainPID $main_pid, no restart)" \
  test "$(prop MainPID)/$(prop NRestarts)" = "$main_pid/0"
# The member queues a message (MessagesDelivered comes back to it alone); the reload above made
# iothubd emit PropertiesChanged for the identity to every member.
peer_send member '{"id":2,"op":"call","dest":"org.iothubd","path":"/org/iothubd/Device","iface":"org.iothubd.Device1","member":"QueueMessage","sig":"sa{ss}a{ss}","args":["{\"check\":\"signals\"}",{},{}]}'
check "the member receives iothubd's PropertiesChanged" peer_saw member '"member":"PropertiesChanged"'
check "... and MessagesDelivered for its own queued message" peer_saw member '"member":"MessagesDelivered"'
# A peer coming and going makes the bus broadcast NameOwnerChanged, which the outsider's
# type='signal' rule does deliver; once the outsider has it, and has answered a round trip,
# everything sent before reached it or never will.
busctl call org.freedesktop.DBus /org/freedesktop/DBus org.freedesktop.DBus GetId >/dev/null
peer_send outsider '{"id":9,"op":"sync"}'
check "the outsider's rules work: it sees the bus announce peers" \
  peer_saw outsider '"member":"NameOwnerChanged"'
check "... and it answered a round trip after everything above" peer_saw outsider '{"id":9,"reply"'
outsider_heard_nothing() {
  if grep -F '"path":"/org/iothubd/Device"' "$peers/outsider.out"; then
    return 1
  fi
}
check "the user outside iothub received nothing from iothubd" outsider_heard_nothing
peer_stop outsider
peer_stop member

reload_id=pkgtest-after-reload-$RUN_ID
result reload_id "$reload_id"
check "SendMessage works after the reload" sends_as pkgtest-app "$reload_id" '{"check":"reload"}'

cursor=$(journal_cursor)
printf '[connection]\nkeep_alive = banana\n' >/etc/iothubd/iothubd.conf.d/70-broken.conf
check "systemctl reload $unit with a broken drop-in" systemctl reload "$unit"
check "the log says why and that the running configuration stays" \
  await_journal "$cursor" "reload failed, keeping the running configuration: configuration: /etc/iothubd/iothubd.conf.d/70-broken.conf:2: [connection] keep_alive: expected an integer"
# --cursor, not --after-cursor: with -p the cursor's own entry (priority info) is filtered out and
# --after-cursor would skip the first match instead.
at_warning() { journalctl -u "$unit" --cursor="$cursor" -p warning..warning -o cat | grep '^reload failed' >/dev/null; }
check "... at priority warning" at_warning
check "the unit stays active in the same process" \
  test "$(prop ActiveState)/$(prop MainPID)/$(prop NRestarts)" = "active/$main_pid/0"
broken_id=pkgtest-broken-$RUN_ID
result broken_id "$broken_id"
check "SendMessage still works with the old configuration" sends_as pkgtest-app "$broken_id" '{"check":"broken"}'
rm /etc/iothubd/iothubd.conf.d/70-broken.conf

# --- 5. clean stop ------------------------------------------------------------------------------
started=$(date +%s%N)
check "systemctl stop $unit" systemctl stop "$unit"
elapsed_ms=$((($(date +%s%N) - started) / 1000000))
check "... returned within 5 s (${elapsed_ms} ms)" test "$elapsed_ms" -lt 5000
check "... Result=success, status=0/exited" \
  test "$(prop Result) $(prop ExecMainCode) $(prop ExecMainStatus)" = "success 1 0"

# D-Bus activation: a call while the daemon is stopped starts it through SystemdService=.
activated_id=pkgtest-activated-$RUN_ID
result activated_id "$activated_id"
check "a call while stopped bus-activates $unit and succeeds" \
  sends_as pkgtest-app "$activated_id" '{"check":"activation"}'
check "... leaving the unit active" test "$(systemctl is-active "$unit")" = active

# iothubd(8)'s encrypted alternative: systemd-creds encrypt + LoadCredentialEncrypted= drop-in.
encrypt_credential() {
  install -d -m 0700 /etc/credstore.encrypted &&
    systemd-creds encrypt --name=connection-string - /etc/credstore.encrypted/connection-string \
      </etc/credstore/connection-string &&
    rm /etc/credstore/connection-string &&
    mkdir -p "/etc/systemd/system/$unit.d" &&
    printf '[Service]\nLoadCredentialEncrypted=connection-string\n' \
      >"/etc/systemd/system/$unit.d/50-encrypted-credential.conf" &&
    systemctl daemon-reload
}
check "connection string encrypted with systemd-creds, plain copy removed" encrypt_credential
check "systemd-analyze verify with the drop-in: nothing on stderr" verify_unit
check "systemctl restart $unit with LoadCredentialEncrypted=" systemctl restart "$unit"
check "... connects with the decrypted credential" await status_connected
encrypted_id=pkgtest-encrypted-$RUN_ID
result encrypted_id "$encrypted_id"
check "SendMessage works with the encrypted credential" \
  sends_as pkgtest-app "$encrypted_id" '{"check":"encrypted"}'

# --- 6. X.509 through /etc/credstore/x509-cert + x509-key ---------------------------------------
use_x509() {
  systemctl stop "$unit" &&
    install -m 0600 "$share/x509-cert" /etc/credstore/x509-cert &&
    install -m 0600 "$share/x509-key" /etc/credstore/x509-key &&
    printf '[hub]\nauthentication = x509\nhostname = localhost\ndevice_id = dev1\nport = %s\n' \
      "$HUB_X509_PORT" >/etc/iothubd/iothubd.conf.d/80-x509.conf
}
check "X.509 certificate and key in /etc/credstore, authentication = x509" use_x509
check "systemctl start $unit with the X.509 credentials" systemctl start "$unit"
check "... it connects with the certificate" await status_connected
check "... which came through LoadCredential=x509-cert and x509-key" \
  test -f "/run/credentials/$unit/x509-cert" -a -f "/run/credentials/$unit/x509-key"
x509_auth() { [[ $(as_user pkgtest-app busctl get-property org.iothubd /org/iothubd/Device org.iothubd.Device1 AuthenticationType) == 's "x509"' ]]; }
check "... AuthenticationType reads x509" x509_auth
x509_id=pkgtest-x509-$RUN_ID
result x509_id "$x509_id"
check "SendMessage works with the X.509 identity" sends_as pkgtest-app "$x509_id" '{"check":"x509"}'
check "final systemctl stop" systemctl stop "$unit"

# --- purge ---------------------------------------------------------------------------------------
check "the state directory exists before the purge" test -d /var/lib/iothubd
purge() { apt-get purge -y -q iothubd >>"$share/apt.log" 2>&1; }
check "apt-get purge iothubd" purge
check "purge removed /var/lib/iothubd" test ! -e /var/lib/iothubd
check "... the bus activation alias" test ! -e /etc/systemd/system/dbus-org.iothubd.service
check "... and the shipped configuration" test ! -e /etc/iothubd/iothubd.conf
check "the accounts stay, as Debian keeps system accounts" has_account passwd iothubd

# --- logs: priorities kept, no secret anywhere --------------------------------------------------
at_notice() { journalctl -u "$unit" -p notice..notice -o cat | grep '^iothubd .* serving device dev1 of localhost' >/dev/null; }
check "<N> prefixes become journal priorities (start-up line at notice)" at_notice
# Issue 14: the real systemd-timedated answered iothubd's question about the clock through the
# sandbox and the bus policy (an error would read "systemd-timedated is not available").
asked_timedated() { journalctl -u "$unit" -o cat | grep -E '^system clock (synchronised|unknown|not synchronised): systemd-timedated: ' >/dev/null; }
check "iothubd asked systemd-timedated whether the clock is synchronised, and got an answer" asked_timedated
no_raw_prefix() { [[ $(journalctl -u "$unit" -o cat | grep -c '^<[0-7]>') == 0 ]]; }
check "... and never show in the message text" no_raw_prefix
journalctl -b -o cat >"$share/messages.txt" 2>&1 || bad "journalctl -b failed"
journal_lacks() { ! grep -qF -- "$1" "$share/messages.txt"; }
check "the device key appears nowhere in the journal" journal_lacks "$DEVICE_KEY"
check "no SAS token in the journal" journal_lacks "SharedAccessSignature sr="
check "no connection string in the journal" journal_lacks "SharedAccessKey="
check "no private key in the journal" journal_lacks "PRIVATE KEY"

finish
