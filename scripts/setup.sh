#!/usr/bin/env bash
# Install everything vfstrace needs on a fresh Debian 12 machine, idempotently:
# system packages (BCC, bpftrace, bpftool, qemu for the VM tests, kernel
# headers BCC can fall back on, chromium for the test that renders the HTML
# report headless, prometheus for the test that scrapes the metrics
# endpoint) and a venv that sees Debian's python3-bpfcc.
# Run as root. Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  python3-bpfcc python3-venv python3-dev bpftrace bpftool
  linux-headers-amd64 kmod
  qemu-system-x86 busybox-static cpio xz-utils zstd
  chromium
  # tests/test_metrics_prometheus.py: a real Prometheus server scrapes `watch --metrics`
  prometheus
  # tests/test_service_unit.py: systemd-analyze verify of the example unit
  systemd
  # vfstrace vm build: the 6.1-prepatch and 6.1-control kernels from source
  build-essential bc bison flex libelf-dev libssl-dev dwarves patch
)

if [ "$(id -u)" -ne 0 ]; then
  echo "setup: must run as root (apt-get and BPF need it)" >&2
  exit 1
fi

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Debian's prometheus package starts a server on every interface where
# systemd runs; vfstrace's tests start their own on loopback, so the
# package's own service is not left listening.
if command -v systemctl >/dev/null 2>&1 && systemctl is-enabled -q prometheus 2>/dev/null; then
  systemctl disable --now prometheus >/dev/null 2>&1 || true
fi

# The venv uses Debian's python3 so that Debian's bcc module is importable.
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import bcc' 2>/dev/null; then
  rm -rf .venv
  /usr/bin/python3 -m venv --system-site-packages .venv
fi
stamp=.venv/.vfstrace-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  # pip and the build backend are chatty; keep their log, show it only on failure.
  log=.venv/pip-install.log
  if ! { .venv/bin/python -m pip install -q --upgrade pip && .venv/bin/python -m pip install -q -e '.[test]'; } >"$log" 2>&1; then
    cat "$log" >&2
    echo "setup: pip install failed (log above, kept in $log)" >&2
    exit 1
  fi
  touch "$stamp"
fi
echo "setup: ready (.venv/bin/vfstrace)"
