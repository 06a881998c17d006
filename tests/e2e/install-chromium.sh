#!/bin/sh
# Headless Chromium for the dashboard's end-to-end test (tests/e2e/test_dashboard.py), from
# Debian's packages. `make test` runs this first so the README's one test command passes on a
# fresh machine, and .ci/run relies on it too (one place that knows how Chromium is installed).
#
# Already installed: nothing to do. Root, or passwordless sudo: apt-get installs it. Otherwise it
# cannot install anything, so it says which command to run; outside CI the dashboard test then
# skips, under CI=true this is an error (the test would fail there anyway, later and less clearly).
set -eu

PACKAGES="chromium chromium-driver"

if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
  exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "install-chromium: chromium is missing and this is not a Debian/Ubuntu system (no apt-get);" \
       "install Chromium with the system's package manager so that 'chromium' is on PATH" >&2
  [ "${CI:-}" = "true" ] && exit 1
  exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
  SUDO=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  SUDO="sudo"
else
  echo "install-chromium: chromium is missing and installing it needs root; run:" >&2
  echo "  sudo apt-get update && sudo apt-get install -y $PACKAGES" >&2
  echo "install-chromium: until then the dashboard test is skipped (and fails under CI=true)" >&2
  [ "${CI:-}" = "true" ] && exit 1
  exit 0
fi

echo "install-chromium: installing Debian's $PACKAGES for the dashboard test"
export DEBIAN_FRONTEND=noninteractive
# shellcheck disable=SC2086  # word splitting of $SUDO and $PACKAGES is intended
$SUDO apt-get update -qq
# shellcheck disable=SC2086
$SUDO apt-get install -y -qq $PACKAGES >/dev/null
command -v chromium >/dev/null 2>&1 || { echo "install-chromium: apt-get ran but chromium is still not on PATH" >&2; exit 1; }
echo "install-chromium: $(chromium --version 2>/dev/null || echo chromium installed)"
