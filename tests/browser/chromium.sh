#!/usr/bin/env bash
# Launches Debian's Chromium for playwright-core, merging every --disable-features=... switch
# into one: Chromium honours only the last one, and Playwright passes its own list before ours.
set -euo pipefail
features=()
args=()
for a in "$@"; do
  case "$a" in
    --disable-features=*) features+=("${a#--disable-features=}") ;;
    *) args+=("$a") ;;
  esac
done
if [ "${#features[@]}" -gt 0 ]; then
  merged=$(IFS=,; echo "${features[*]}")
  args+=("--disable-features=$merged")
fi
exec "${CHROMIUM_BIN:-/usr/bin/chromium}" "${args[@]}"
