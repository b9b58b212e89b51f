#!/usr/bin/env bash
# The one test command (README): installs what the tests need on a fresh
# Debian machine, then runs ruff and the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
for tool in ip:iproute2 iptables-restore:iptables nft:nftables systemd-analyze:systemd keepalived:keepalived conntrackd:conntrackd \
            conntrack:conntrack ipset:ipset unshare:util-linux nsenter:util-linux \
            sysctl:procps ping:iputils-ping pgrep:procps dot:graphviz groff:groff-base man:man-db \
            zsh:zsh fish:fish; do
    command -v "${tool%%:*}" >/dev/null 2>&1 || need_apt+=("${tool##*:}")
done
# glibc's locale sources: tests/test_environment.py builds a Latin-1 and a Turkish locale
[[ -f /usr/share/i18n/locales/tr_TR ]] || need_apt+=(locales)
if ((${#need_apt[@]})); then
    if [[ $(id -u) -eq 0 ]]; then
        echo "tests/run.sh: installing ${need_apt[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            "${need_apt[@]}" >/dev/null
    else
        echo "tests/run.sh: missing ${need_apt[*]} and not root: root-only tests will skip" >&2
    fi
fi

python3 -m pip install -q --disable-pip-version-check -e '.[test,fast]'
# An editable install is not byte-compiled, and with PYTHONDONTWRITEBYTECODE=1 (set on the
# machines this project runs on) every `python3 -m fwc` the tests start would compile
# every module again: 0.35 s of CPU each (docs/performance.md).
python3 -m compileall -q fwc
python3 -m ruff check fwc tests bench
# Three workers on CI's two cores: the namespace labs mostly wait (adverts, preempt
# delays), the rest is CPU; tests/conftest.py keeps a module's tests on one worker
# and queues the slowest first.
python3 -m pytest -q -p no:cacheprovider -n 3 --dist loadgroup "$@"
