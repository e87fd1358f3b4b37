#!/usr/bin/env bash
# Set up dicomnode in ./.venv: Python venv, torch 2.13.0 (CPU wheel), dicomnode, deepbet's weights (and ONNX).
#   scripts/setup.sh          runtime only
#   scripts/setup.sh --dev    plus the test and lint tools (dependency group "dev")
# Idempotent: a stamp of pyproject.toml and this script skips the pip steps when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."
dev=0; [ "${1:-}" = --dev ] && dev=1

missing=()
command -v python3 >/dev/null || missing+=(python3)
python3 -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
stamp=".venv/.dicomnode-setup-$dev-$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  pip=(.venv/bin/python -m pip install -q --disable-pip-version-check)
  "${pip[@]}" --upgrade "pip>=25.1"
  # The CPU wheel first: a plain "torch" requirement must never pull a multi-GB CUDA build.
  "${pip[@]}" torch==2.13.0
  if [ "$dev" = 1 ]; then
    "${pip[@]}" -e ".[torch,onnx,postgres,fl]" --group dev
    # Flower for `dicomnode fl` and its tests, without its pins (they would downgrade the web stack; extra fl)
    "${pip[@]}" --no-deps flwr==1.42.0
  else
    "${pip[@]}" -e ".[torch,onnx]"
  fi
  # deepbet ships the brain-extraction TorchScript weights; --no-deps keeps out its GUI (customtkinter).
  "${pip[@]}" --no-deps deepbet==1.0.2
  rm -f .venv/.dicomnode-setup-*
  touch "$stamp"
fi
# deepbet's two networks as ONNX, derived from those weights (8.5 MB each, not committed) and checked
# against the SHA-256 in models/deepbet/manifest.toml. Without them the node runs the TorchScript files.
if [ ! -f models/deepbet/model.onnx ] || [ ! -f models/deepbet/bbox_model.onnx ]; then
  .venv/bin/python training/export_deepbet.py \
    || echo "setup.sh: deepbet's ONNX files were not derived; deepbet runs on TorchScript" >&2
fi
