#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# iothubctl's bash completion: what a user gets after TAB, for each level of the command line.
#   completion_test.sh COMPLETION_FILE
# Exit 77 (meson: skipped) without bash-completion (the package build does not install it).
set -uo pipefail
readonly lib=/usr/share/bash-completion/bash_completion
[[ -r $lib ]] || { echo "bash-completion is not installed: skipped"; exit 77; }
# shellcheck disable=SC1090
source "$lib"
# shellcheck disable=SC1090
source "$1"

failures=0
# expect "WORDS ON THE LINE" "expected completions, sorted, space-separated"
expect() {
  local line=$1 want=$2
  read -r -a COMP_WORDS <<<"$line"
  [[ $line == *' ' ]] && COMP_WORDS+=('')
  COMP_CWORD=$((${#COMP_WORDS[@]} - 1))
  COMP_LINE=$line
  COMP_POINT=${#line}
  COMPREPLY=()
  # compopt complains outside a real completion; readline would also drop duplicates (sort -u).
  _iothubctl iothubctl "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD - 1]}" 2>/dev/null
  local got
  got=$(printf "%s\n" "${COMPREPLY[@]}" | sort -u | tr '\n' ' ' | sed 's/ $//')
  if [[ $got == "$want" ]]; then
    echo "ok   '$line' -> $got"
  else
    echo "FAIL '$line' -> '$got', expected '$want'"
    failures=$((failures + 1))
  fi
}

expect 'iothubctl ' 'c2d check help method send status twin upload'
expect 'iothubctl tw' 'twin'
expect 'iothubctl twin ' 'get patch watch'
expect 'iothubctl method ' 'list serve'
expect 'iothubctl c2d ' 'watch'
expect 'iothubctl --json twin w' 'watch'
expect 'iothubctl send --q' '--queue'
expect 'iothubctl send --content-t' '--content-type'
expect 'iothubctl send --content-type application/j' 'application/json'
expect 'iothubctl twin watch --c' '--count'
expect 'iothubctl check --c' '--config --credentials-dir'
expect 'iothubctl status --j' '--json'
expect 'iothubctl method serve reboot -- tru' 'true truncate'
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
touch "$dir/report.csv"
expect "iothubctl upload $dir/rep" "$dir/report.csv"
[[ $failures -eq 0 ]]
