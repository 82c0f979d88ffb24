#!/usr/bin/env bash
# Sourced by the demo and test scripts: makes sure a C compiler and a Rust toolchain are there
# (on a fresh Debian/Ubuntu machine: build-essential from apt, Rust from rustup).

ensure_toolchain() {
  local as_root=()
  [ "$(id -u)" = 0 ] || as_root=(sudo)
  if ! command -v cc >/dev/null; then
    echo "[toolchain] installing a C compiler (build-essential) with apt" >&2
    "${as_root[@]}" apt-get update -qq
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq build-essential curl ca-certificates >/dev/null
  fi
  if ! command -v cargo >/dev/null && [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
  fi
  if ! command -v cargo >/dev/null; then
    echo "[toolchain] installing Rust (stable, minimal profile) with rustup" >&2
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --component clippy,rustfmt
    export PATH="$HOME/.cargo/bin:$PATH"
  fi
}

# The venv of the SDK conformance test (tests/conformance/requirements.txt pins the official
# Genesys Cloud Python SDK); rebuilt when the requirements change.
ensure_conformance_venv() {
  local requirements=tests/conformance/requirements.txt stamp=.venv/.requirements
  if [ -x .venv/bin/python ] && cmp -s "$requirements" "$stamp"; then
    return 0
  fi
  local as_root=()
  [ "$(id -u)" = 0 ] || as_root=(sudo)
  if ! command -v python3 >/dev/null || ! python3 -m venv --help >/dev/null 2>&1; then
    echo "[toolchain] installing python3 and python3-venv with apt" >&2
    "${as_root[@]}" apt-get update -qq
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv >/dev/null
  fi
  echo "[toolchain] creating .venv with $(tr '\n' ' ' <"$requirements")" >&2
  rm -rf .venv
  python3 -m venv .venv || {
    # Debian's python3 needs the versioned venv package for ensurepip.
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "python3.$(python3 -c 'import sys;print(sys.version_info[1])')-venv" >/dev/null
    python3 -m venv .venv
  }
  .venv/bin/pip install --quiet --disable-pip-version-check -r "$requirements"
  cp "$requirements" "$stamp"
}
