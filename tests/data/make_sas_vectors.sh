#!/bin/bash
# SPDX-License-Identifier: MIT
# Regenerates sas_vectors.txt with the openssl CLI only (no iothubd code), so the SAS known-answer
# test checks our implementation against an independent one. Usage: ./make_sas_vectors.sh > sas_vectors.txt
# The keys are random test keys made with `openssl rand -base64 32`; they belong to no hub.
set -euo pipefail
export LC_ALL=C  # enc() must work on bytes

# enc(x) of the protocol doc: percent-encode every byte except A-Z a-z 0-9 - . _ ~ (upper-case hex).
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

# signature = base64(HMAC-SHA256(base64-decode(key), enc(uri) + "\n" + se))
sig() {  # uri se key
  printf '%s\n%s' "$(enc "$1")" "$2" |
    openssl dgst -sha256 -mac HMAC -macopt "hexkey:$(printf %s "$3" | base64 -d | xxd -p -c256)" -binary |
    base64 -w0
}

vector() {  # name uri keyBase64 se policy('-' = none)
  local name=$1 uri=$2 key=$3 se=$4 policy=$5 token
  token="SharedAccessSignature sr=$(enc "$uri")&sig=$(enc "$(sig "$uri" "$se" "$key")")&se=$se"
  if [ "$policy" != - ]; then token+="&skn=$(enc "$policy")"; fi
  printf '%s|%s|%s|%s|%s|%s\n' "$name" "$uri" "$key" "$se" "$policy" "$token"
}

echo '# SAS token known-answer vectors for tests/unit/proto (SasToken tests). DO NOT EDIT: computed'
echo '# independently of iothubd by tests/data/make_sas_vectors.sh, reproduced here in full:'
echo '#'
sed 's/^/#   /' "$0"
echo '#'
echo '# Format: name|resourceUri|keyBase64|expiry|policy (- = none)|expected token'
vector device contoso.azure-devices.net/devices/dev1 \
  UxJ3yLCg3tYdAqzP1Spzsp5BMHcY2nBNRL3Pbv541Pc= 1735689600 -
vector module contoso.azure-devices.net/devices/dev1/modules/mod1 \
  NQobN2T+25DwJxydcE0fKSC0Yh1LzwDjm5oTJV3y1Hk= 1700000000 -
# se chosen so the signature contains '+', '/' and '=' (all three must be percent-encoded).
vector plus-slash-equals contoso.azure-devices.net/devices/sensor-7 \
  r/aVti8MDmUUgTK/kuXQan1l6pX56lRENP5BbdcYkrM= 1735689601 -
# ':' and '@' are legal in device ids and must be encoded in the string to sign.
vector encoded-device-id 'contoso.azure-devices.net/devices/dev:1@site' \
  H6iY3ysBvkmaZKCcpmJEaicADcUDTkxisDLaGZVvZIY= 4102444800 -
vector policy contoso.azure-devices.net \
  UxJ3yLCg3tYdAqzP1Spzsp5BMHcY2nBNRL3Pbv541Pc= 1735689600 iothubowner
