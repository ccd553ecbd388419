#!/bin/bash
# SPDX-License-Identifier: MIT
# End-to-end check of the `hub-emulator` shell entry point: start, observe, request, token, stop.
# Usage: hub_emulator_script_test.sh SCRIPT PLUGIN
set -euo pipefail
script=$1
plugin=$2
command -v mosquitto_pub >/dev/null || exit 77 # meson: skipped

dir=$(mktemp -d "${TMPDIR:-/tmp}/hub-emulator-script-XXXXXX")
hub=$dir/hub
dps=$dir/dps
cleanup() {
  "$script" stop "$hub" || true
  "$script" stop "$dps" || true
  rm -rf "$dir"
}
trap cleanup EXIT
fail() {
  echo "FAIL: $*" >&2
  cat "$hub/broker.log" >&2 2>/dev/null || true
  exit 1
}

key=$(openssl rand -base64 32)
"$script" start "$hub" --plugin "$plugin" --device "dev1=$key" --device dev2 --x509
# shellcheck disable=SC1091
source "$hub/env"
for var in HUB_HOST HUB_PORT HUB_CA HUB_PID HUB_SERVICE_PASSWORD HUB_X509_PORT; do
  [[ -n "${!var:-}" ]] || fail "$var missing from env"
done
grep -q "^dev1 $key\$" "$hub/registry" || fail "registry lacks dev1"

"$script" observe "$hub" --count 1 --timeout 10 >"$dir/observed" &
observer=$!
# The observer must be subscribed before the device publishes (bounded wait on the broker log).
for _ in $(seq 200); do
  grep -q "Sending SUBACK to observe-$observer" "$hub/broker.log" && break
  sleep 0.05
done

token=$("$script" token "$hub" dev1)
mosquitto_pub -h "$HUB_HOST" -p "$HUB_PORT" --cafile "$HUB_CA" -V mqttv311 -i dev1 \
  -u "localhost/dev1/?api-version=2021-04-12" -P "$token" -q 1 \
  -t 'devices/dev1/messages/events/%24.mid=m1&alert%20level=high' -m '{"t":1}' ||
  fail "device publish refused"
wait "$observer" || fail "observe failed"
grep -qF 'devices/dev1/messages/events/%24.mid=m1&alert%20level=high {"t":1}' "$dir/observed" ||
  fail "observed: $(cat "$dir/observed")"
grep -qxF '  $.mid=m1' "$dir/observed" || fail "no decoded \$.mid"
grep -qxF '  alert level=high' "$dir/observed" || fail "no decoded custom property"

# A wrong key is refused.
if mosquitto_pub -h "$HUB_HOST" -p "$HUB_PORT" --cafile "$HUB_CA" -V mqttv311 -i dev2 \
  -u "localhost/dev2/?api-version=2021-04-12" -P "$token" -q 1 -t devices/dev2/messages/events/ \
  -m x 2>/dev/null; then
  fail "dev2 connected with dev1's token"
fi

"$script" request "$hub" status | grep -q '"status":200' || fail "status request"

# X.509: a certificate the CA issued for dev1 connects without a password; dev2's does not
# pass as dev1.
"$script" cert "$hub" dev1 "$dir/dev1.crt" "$dir/dev1.key"
"$script" cert "$hub" dev2 "$dir/dev2.crt" "$dir/dev2.key"
[[ $(stat -c %a "$dir/dev1.key") == 600 ]] || fail "the client key is not 0600"
mosquitto_pub -h "$HUB_HOST" -p "$HUB_X509_PORT" --cafile "$HUB_CA" --cert "$dir/dev1.crt" \
  --key "$dir/dev1.key" -V mqttv311 -i dev1 -u "localhost/dev1/?api-version=2021-04-12" -q 1 \
  -t 'devices/dev1/messages/events/%24.mid=x509' -m x509 || fail "X.509 device refused"
if mosquitto_pub -h "$HUB_HOST" -p "$HUB_X509_PORT" --cafile "$HUB_CA" --cert "$dir/dev2.crt" \
  --key "$dir/dev2.key" -V mqttv311 -i dev1 -u "localhost/dev1/?api-version=2021-04-12" -q 1 \
  -t devices/dev1/messages/events/ -m x 2>/dev/null; then
  fail "dev2's certificate passed as dev1"
fi

pid=$HUB_PID
"$script" stop "$hub"
"$script" stop "$hub" # idempotent
state=$(awk '/^State:/ { print $2 }' "/proc/$pid/status" 2>/dev/null || true)
[[ -z "$state" || "$state" == Z ]] || fail "mosquitto $pid still running ($state)"
[[ ! -e "$hub/env" ]] || fail "env left behind"

# The same entry point starts the DPS emulation (README, "DPS emulator").
group_key=$(openssl rand -base64 64 | tr -d '\n')
printf '{"idScope":"0ne0000E1E1","hubs":["localhost"],"enrollments":[{"kind":"group","name":"g","key":"%s"}]}' \
  "$group_key" >"$dir/dps.json"
"$script" start "$dps" --plugin "$plugin" --plugin-opt mode=dps --plugin-opt "dps_config=$dir/dps.json"
"$script" request "$dps" status | grep -q '"idScope":"0ne0000E1E1"' || fail "DPS status request"
"$script" stop "$dps"
echo "ok"
