#!/usr/bin/env bash
# The whole test suite, on a fresh Debian machine as root or on a developer's machine.
# Installs what the tests need when it is missing, then runs pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
# A second browser engine publishes simulcast in tests/e2e/test_browser_simulcast.py.
command -v firefox-esr >/dev/null 2>&1 || need_apt+=(firefox-esr)
# A private coturn relays the SFU's media in tests/e2e/test_rtphooks_wire.py.
command -v turnserver >/dev/null 2>&1 || need_apt+=(coturn)
# Impaired links (bench/netns.py: network namespace, tbf, nftables loss) in
# tests/e2e/test_loss_first_frame.py and bench.adaptation.
command -v ip >/dev/null 2>&1 && command -v tc >/dev/null 2>&1 || need_apt+=(iproute2)
command -v nft >/dev/null 2>&1 || need_apt+=(nftables)
# pip install compiles server/_srtpsend.c: a C compiler and this Python's headers.
command -v cc >/dev/null 2>&1 || need_apt+=(gcc libc6-dev)
python3 -c 'import os, sysconfig, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
    || need_apt+=(python3-dev)
# npm fetches axe-core for the accessibility tests (tests/e2e/test_web_a11y.py).
command -v npm >/dev/null 2>&1 || need_apt+=(npm)
# deploy/ is checked by the tools that run it (tests/e2e/test_deploy_*.py): nginx (1.3 MB),
# promtool from prometheus (96 MB installed, the only Debian package that has it) and
# systemd-analyze from systemd.
services=()
command -v nginx >/dev/null 2>&1 || { need_apt+=(nginx); services+=(nginx); }
command -v promtool >/dev/null 2>&1 || { need_apt+=(prometheus); services+=(prometheus); }
command -v systemd-analyze >/dev/null 2>&1 || need_apt+=(systemd)
if ((${#need_apt[@]})); then
    echo "tests/run.sh: installing ${need_apt[*]} from Debian packages"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
    # The packages start their daemons where systemd runs; the tests start their own.
    if ((${#services[@]})) && [ -d /run/systemd/system ]; then
        systemctl disable --now "${services[@]}" >/dev/null 2>&1 || true
    fi
fi

python3 -m pip install -q --disable-pip-version-check -e '.[test]'

# axe-core from the npm registry, at the version web/axe/package-lock.json pins.
if [ ! -f web/axe/node_modules/axe-core/axe.min.js ]; then
    npm ci --prefix web/axe --no-audit --no-fund --loglevel=error
fi

# Redis tests start their own redis-server on a free port; nothing shared is touched.
exec python3 -m pytest -q -p no:cacheprovider "$@"
