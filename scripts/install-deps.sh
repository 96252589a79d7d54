#!/usr/bin/env bash
# Installs the Debian 12 packages qcow2j needs to build and test, if missing.
set -euo pipefail
PKGS=(build-essential cmake pkg-config clang zlib1g-dev libzstd-dev libisal-dev libxxhash-dev libboost-dev
      librapidcheck-dev libgtest-dev liburing-dev nbdkit nbdkit-plugin-dev qemu-utils strace
      python3 fio libnbd-bin)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "install-deps: installing ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
