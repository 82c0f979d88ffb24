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
