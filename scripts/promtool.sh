#!/usr/bin/env bash
# Puts promtool (from the Debian package `prometheus`) at .cache/bin/promtool, for the test that runs
# `promtool check metrics` on every service's /metrics. The package is downloaded and unpacked, not
# installed (no service, no postinst); nothing happens when promtool is already there.
# Exits 0 without promtool when it cannot be had (no apt, no network): that test then skips and says why.
set -uo pipefail
cd "$(dirname "$0")/.."
target=.cache/bin/promtool
if [ -x "$target" ] && "$target" --version >/dev/null 2>&1; then exit 0; fi
if ! command -v apt-get >/dev/null 2>&1 || ! command -v dpkg >/dev/null 2>&1; then
  echo "promtool: apt-get/dpkg not available; the promtool test will skip" >&2; exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fetch() { (cd "$work" && apt-get download -q prometheus >/dev/null 2>&1); }
if ! fetch; then
  # Package lists missing or stale: refresh them once (needs root, as CI is).
  apt-get update -q >/dev/null 2>&1 || true
  fetch || { echo "promtool: apt-get download prometheus failed; the promtool test will skip" >&2; exit 0; }
fi
dpkg -x "$work"/prometheus_*.deb "$work/x" || { echo "promtool: cannot unpack the package" >&2; exit 0; }
mkdir -p .cache/bin
cp "$work/x/usr/bin/promtool" "$target"
"$target" --version 2>&1 | head -1
