#!/bin/sh
# Installs what the test suite needs on a fresh Debian machine: Python packages, and Debian's
# chromium for the browser tests (Playwright cannot download its own browser here), nginx
# for the reverse-proxy tests and redis-server for the cluster tests. apt-get needs root; pip
# installs for the `python` on PATH (a virtual environment's, once activated).
set -e
cd "$(dirname "$0")/.."
python -m pip install -q --disable-pip-version-check -r requirements-dev.txt
if ! command -v chromium >/dev/null 2>&1 || ! [ -x /usr/sbin/nginx ] ||
    ! command -v redis-server >/dev/null 2>&1; then
    if [ "$(id -u)" != 0 ]; then
        echo "tests/install.sh: chromium, nginx or redis-server is missing and apt-get needs" \
            "root: run this as root, or first:" \
            "sudo apt-get install chromium fonts-dejavu-core nginx redis-server" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq chromium fonts-dejavu-core nginx redis-server >/dev/null
fi
