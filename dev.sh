#!/usr/bin/env bash
# One entry point for people and CI:
#   ./dev.sh demo [ARGS...]   set up (if needed) and run the simulated flywheel on hw_profiles/sim.toml
#   ./dev.sh test [ARGS...]   set up (if needed) and run the whole test suite
#   ./dev.sh bench [ARGS...]  set up what the benchmarks need and run them (python -m benchmarks ARGS)
#   ./dev.sh setup            only set up: Debian libzbar0, .venv, pinned packages
# Set-up is idempotent: it reinstalls only when pyproject.toml or constraints.txt changed.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"
venv="${CAPSIGHT_VENV:-$here/.venv}"
extras="${CAPSIGHT_EXTRAS:-edge,sink,train,dev}"

log() { printf '[dev.sh] %s\n' "$*" >&2; }

need_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    log "need root to run: $*"; return 1; fi
}

ensure_zbar() {
  # pyzbar loads libzbar.so.0 through ctypes at run time; pip cannot provide it.
  if ldconfig -p 2>/dev/null | grep -q 'libzbar\.so\.0'; then return 0; fi
  log "installing Debian package libzbar0"
  need_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive need_root apt-get install -y -qq libzbar0 >/dev/null
}

ensure_ffprobe() {
  # The recorder's tests check every clip with ffprobe, as a user's player would see it.
  if command -v ffprobe >/dev/null; then return 0; fi
  log "installing Debian package ffmpeg (ffprobe, for the tests)"
  need_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive need_root apt-get install -y -qq ffmpeg >/dev/null
}

ensure_chromium() {
  # The review UI's test drives Debian's chromium with Playwright (its own download cannot work).
  if command -v chromium >/dev/null || command -v chromium-browser >/dev/null; then return 0; fi
  log "installing Debian package chromium (the review UI's browser test)"
  need_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive need_root apt-get install -y -qq chromium >/dev/null
}

ensure_fuse() {
  # The power-cut tests mount tests/lazyfs.py with libfuse3 (mfusepy loads it through ctypes);
  # they skip with the reason where FUSE cannot be used.
  if ldconfig -p 2>/dev/null | grep -q 'libfuse3\.so\.3' && command -v fusermount3 >/dev/null; then
    return 0; fi
  log "installing Debian package fuse3 (the power-cut tests' filesystem)"
  need_root apt-get update -qq || return 0
  DEBIAN_FRONTEND=noninteractive need_root apt-get install -y -qq fuse3 >/dev/null || \
    log "fuse3 not installed: the power-cut tests will skip"
}

ensure_postgres() {
  # The sink's tests run against a real PostgreSQL server too (initdb in a temporary folder,
  # see cloud_sink/localpg.py); they skip with the reason where it cannot be installed.
  if command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    return 0; fi
  log "installing Debian package postgresql (the sink's PostgreSQL tests)"
  need_root apt-get update -qq || return 0
  DEBIAN_FRONTEND=noninteractive need_root apt-get install -y -qq postgresql >/dev/null || \
    log "postgresql not installed: the sink's PostgreSQL tests will skip"
}

pick_python() {
  # The pinned torch CPU wheel is built for CPython 3.11.
  for p in python3.11 python3; do
    if command -v "$p" >/dev/null && "$p" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
      echo "$p"; return 0; fi
  done
  log "Python 3.11 or newer is required"; return 1
}

ensure_venv() {
  local stamp="$venv/.capsight-installed" want
  want="$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)-$extras"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then return 0; fi
  if [ ! -x "$venv/bin/python" ]; then
    log "creating virtual environment $venv"
    "$(pick_python)" -m venv "$venv"
  fi
  log "installing capsight[$extras] with pinned versions (constraints.txt)"
  "$venv/bin/python" -m pip install -q --upgrade pip
  "$venv/bin/python" -m pip install -q -c constraints.txt -e ".[${extras}]"
  echo "$want" > "$stamp"
}

setup() { ensure_zbar; ensure_venv; }

cmd="${1:-help}"; [ $# -gt 0 ] && shift
case "$cmd" in
  setup) setup ;;
  demo) setup; exec "$venv/bin/capsight" demo "$@" ;;
  test) setup; ensure_ffprobe; ensure_chromium; ensure_fuse; ensure_postgres; exec "$venv/bin/python" -m pytest "$@" ;;
  bench) setup; ensure_fuse; ensure_postgres; exec "$venv/bin/python" -m benchmarks "$@" ;;
  *) sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
