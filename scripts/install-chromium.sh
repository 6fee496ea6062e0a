#!/usr/bin/env bash
# Installs Debian's chromium for the dashboard's browser tests (needs root
# or sudo and Debian's package archive). Does nothing when it is there.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
	echo "chromium: $(command -v chromium)"
	exit 0
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
echo "chromium: $(command -v chromium)"
