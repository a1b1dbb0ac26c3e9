#!/usr/bin/env bash
# The Debian packages the UI tests drive: headless Chromium (+ its WebDriver) for the browser
# test, docker-compose to validate docker-compose.yaml (there is no Docker engine here), and
# python3-venv: the cloud fakes build their "managed image" venv from the system Python.
# Installs only what is missing; needs root or sudo, and says so plainly when it has neither.
set -euo pipefail
packages=(chromium chromium-driver docker-compose python3-venv)
missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -eq 0 ]; then
  as_root=()
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
  as_root=(sudo -n)
else
  echo ">> cannot install ${missing[*]} (no root, no sudo): the browser and compose tests will say so" >&2
  exit 0
fi
echo ">> apt-get install ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
"${as_root[@]}" apt-get update -qq
"${as_root[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
