#!/bin/bash
# SPDX-License-Identifier: MIT
# Regenerates dps_vectors.txt with the openssl CLI only (no iothubd code), so the DPS known-answer
# tests check our group-key derivation and DPS SAS tokens against an independent implementation.
# Usage: ./make_dps_vectors.sh > dps_vectors.txt
# The group keys are random test keys made with `openssl rand -base64 64` and `-base64 32`; they
# belong to no DPS instance.
set -euo pipefail
export LC_ALL=C  # enc() must work on bytes

# enc(x): percent-encode every byte except A-Z a-z 0-9 - . _ ~ (upper-case hex).
enc() {
  local s=$1 out='' c i
  for ((i = 0; i < ${#s}; i++)); do
    c=${s:i:1}
    case $c in
      [A-Za-z0-9._~-]) out+=$c ;;
      *) out+=$(printf '%%%02X' "'$c") ;;
    esac
  done
  printf %s "$out"
}

hmac() {  # message keyBase64 -> base64(HMAC-SHA256(base64-decode(key), message))
  printf '%s' "$1" |
    openssl dgst -sha256 -mac HMAC -macopt "hexkey:$(printf %s "$2" | base64 -d | xxd -p -c256)" -binary |
    base64 -w0
}

# Group enrollment (Microsoft Learn, "Derive a device key"): the device key is
# base64(HMAC-SHA256(base64-decode(groupKey), registrationId)). The DPS token is signed with it:
# sr = enc(idScope/registrations/registrationId), sig = hmac(sr + "\n" + se), skn=registration.
vector() {  # name groupKey registrationId idScope se
  local name=$1 group=$2 reg=$3 scope=$4 se=$5 key sr token
  key=$(hmac "$reg" "$group")
  sr=$(enc "$scope/registrations/$reg")
  token="SharedAccessSignature sr=$sr&sig=$(enc "$(hmac "$sr"$'\n'"$se" "$key")")&se=$se&skn=registration"
  printf '%s|%s|%s|%s|%s|%s|%s\n' "$name" "$group" "$reg" "$key" "$scope" "$se" "$token"
}

echo '# DPS known-answer vectors for tests/unit/proto (Provisioning tests). DO NOT EDIT: computed'
echo '# independently of iothubd by tests/data/make_dps_vectors.sh, reproduced here in full:'
echo '#'
sed 's/^/#   /' "$0"
echo '#'
echo '# Format: name|groupKeyBase64|registrationId|derivedDeviceKey|idScope|expiry|DPS SAS token'
vector group-64-byte-key \
  'eLR2iER0utabsA7eM5h6xCKQkL0i8oFvGcrcNq4/ZNj+zqWxvte9ag9eO5RP+3Z1qTEMhguSvnYAvFIKwDgycA==' \
  gw-0017 0ne00000A0A 1735689600
vector group-32-byte-key 'DdW2yyPD8HgxXYNI2vaVRTXT045OdscoZM0rNbtJkqQ=' \
  sensor.site-3:line_7 0ne00ABCDEF 4102444800
