#!/usr/bin/env bash
# One-command set-up of Mask R-CNN++ into the active Python environment (venv, conda or system).
# Idempotent: what is already installed and working is left alone, a working torch above all.
#
#   bash scripts/install.sh
#   DETECTRON2_SOURCE=/path/to/detectron2 bash scripts/install.sh   # no GitHub: a source folder or archive
#   WHEELS=/path/to/wheels DETECTRON2_SOURCE=... bash scripts/install.sh   # no package index at all
#   DETECTRON2_CUDA_OPS=1 bash scripts/install.sh   # also compile detectron2's own CUDA kernels
#   TORCH_VERSION=2.14.1 TORCHVISION_VERSION=0.29.1 bash scripts/install.sh   # this pair, exactly
#   EXTRAS=test bash scripts/install.sh   # the package's extras to install (default below)
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
# Where no working torch + torchvision is found: the newest pair the package index offers (within
# pip's configured constraints) from torch 2.3 to the newest series tested here (2.14), matched by
# pip's resolver, since each torchvision release requires the torch it was built for. A version
# named here is installed exactly (TORCH_VERSION alone gets the torchvision series built for it).
TORCH_VERSION=${TORCH_VERSION:-}
TORCHVISION_VERSION=${TORCHVISION_VERSION:-}
DETECTRON2_COMMIT=02b5c4e295e990042a714712c21dc79b731e8833
DETECTRON2_REPO=https://github.com/facebookresearch/detectron2.git
PIP=("$PYTHON" -m pip install --disable-pip-version-check)

step() { echo "[install] $*"; }
fail() { echo "[install] ERROR: $*" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Offline: everything pip installs comes from a folder of wheels (see README, "Offline set-up").
if [ -n "${WHEELS:-}" ]; then
  [ -d "$WHEELS" ] || fail "WHEELS=$WHEELS is not a folder; make one with scripts/download_wheels.sh."
  export PIP_NO_INDEX=1 PIP_FIND_LINKS
  PIP_FIND_LINKS=$(cd "$WHEELS" && pwd)
fi
offline_hint=""
# The package's extras: test (pytest, ONNX) and napari (the napari plugin: napari and its Qt
# binding, about a minute to install from the index). A wheel folder (scripts/download_wheels.sh,
# the GPU kit) holds no GUI, so offline the default is test alone; EXTRAS=... chooses either way.
extras_default=test,napari
case "${PIP_NO_INDEX:-}" in
  1|true|yes|on) extras_default=test
    offline_hint="
  pip reads no package index here (PIP_NO_INDEX), only ${PIP_FIND_LINKS:-no wheel folder}: add the
  package pip names above to that folder (scripts/download_wheels.sh makes a complete one)." ;;
esac
EXTRAS=${EXTRAS:-$extras_default}
pip_install() { "${PIP[@]}" "$@" || fail "pip install $* failed; see pip's message above.$offline_hint"; }

step "python: $("$PYTHON" -c 'import sys; print(sys.executable, sys.version.split()[0])')"
read -r -a torch_requirements <<< "$("$PYTHON" scripts/check_torch.py --requirements "$TORCH_VERSION" "$TORCHVISION_VERSION")"
quoted_requirements=$(printf "'%s' " "${torch_requirements[@]}")

# 1. torch + torchvision: any pair that works is kept, whatever its version or CUDA build (a GPU
#    user's torch matches their driver); a pair is installed only where none works.
check_torch() {
  set +e
  "$PYTHON" scripts/check_torch.py | sed 's/^/[install]   /'
  local status=${PIPESTATUS[0]}
  set -e
  return "$status"
}
# pip installs a pair; $torch and $torchvision are then the versions it installed
installed_pair() {
  local versions
  versions=$("$PYTHON" scripts/check_torch.py --installed) || fail "torch or torchvision is not installed."
  read -r torch torchvision <<< "$versions"
}
install_pair() { pip_install "$@"; installed_pair; }
pair_matches() {  # torchvision 0.N is built for torch 2.(N-15)
  local series
  series=$("$PYTHON" scripts/check_torch.py --torchvision-for "$torch")
  [ -z "$series" ] || [[ "$torchvision" == "$series".* ]]
}
step "looking for a working torch + torchvision (torchvision.ops.nms on the CPU, and on CUDA if present)"
status=0; check_torch || status=$?
case $status in
  0) step "keeping this torch + torchvision" ;;
  10)
    step "installing the newest torch + torchvision the package index offers for ${torch_requirements[*]}"
    install_pair "${torch_requirements[@]}"
    if [ -z "$TORCH_VERSION" ] && ! pair_matches; then
      # a torchvision that accepts newer torch releases than its own (torch>=, not torch==) was
      # paired with one of them: keep the torchvision, install the torch it was built for
      series=$("$PYTHON" scripts/check_torch.py --torch-for "$torchvision")
      if [ -n "$series" ]; then
        step "torchvision $torchvision is built for torch $series, not $torch: installing torch $series.*"
        install_pair "torch==$series.*" "torchvision==$torchvision"
      fi
    fi
    pair_matches || fail "torchvision $torchvision is not built for torch $torch (that is torchvision $("$PYTHON" scripts/check_torch.py --torchvision-for "$torch").*).
  Install a matching pair, e.g. $PYTHON -m pip install $quoted_requirements, then run this script again."
    step "chose torch $torch + torchvision $torchvision"
    check_torch || fail "torchvision.ops.nms does not run with the torch just installed.
  A torch build that satisfies torchvision's requirement but is not the one it was built for (e.g. a
  local CPU-only wheel next to the registry's torchvision) is installed.
  Fix: $PYTHON -m pip install --force-reinstall torch==$torch torchvision==$torchvision" ;;
  11)
    torch=$("$PYTHON" -c 'import torch; print(torch.__version__)')
    series=$("$PYTHON" scripts/check_torch.py --torchvision-for "$torch")
    [ -n "$series" ] || fail "no torchvision is known for torch $torch; install the one built for it."
    step "torch $torch is kept; installing torchvision $series.* for it (--no-deps: torch stays)"
    pip_install --no-deps "torchvision==$series.*"
    check_torch || fail "torchvision $series does not run with torch $torch. Install the torchvision
  built for your torch from the same place your torch came from, e.g.
    $PYTHON -m pip install torchvision==$series.* --index-url https://download.pytorch.org/whl/cu<your CUDA>
  then run this script again." ;;
  12) fail "upgrade torch, e.g. $PYTHON -m pip install --upgrade $quoted_requirements
  (or the build for your CUDA from https://pytorch.org/get-started/locally/), then run this script again." ;;
  *) fail "scripts/check_torch.py failed (exit code $status); see its output above." ;;
esac

# From here on, pip may not replace the torch pair: every install is constrained to it (on top of
# any constraints pip is configured with).
installed_pair
printf 'torch==%s\ntorchvision==%s\n' "$torch" "$torchvision" > "$work/constraints.txt"
PIP+=(--constraint "$work/constraints.txt")

# 2. Build tools. setuptools<81 still ships pkg_resources, which detectron2.model_zoo imports.
if "$PYTHON" -c "import pkg_resources, wheel" 2>/dev/null; then
  step "setuptools with pkg_resources already present"
else
  pip_install --quiet "setuptools>=70,<81" wheel
fi

# 3. detectron2: not on the package registry, so built from source against the installed torch.
#    Mask R-CNN takes ROIAlign and NMS from torchvision and uses none of detectron2's CUDA kernels
#    (deformable convolution, rotated boxes), so they are compiled only on request.
detectron2_works() {
  "$PYTHON" -c "import detectron2, detectron2._C, detectron2.model_zoo" 2>/dev/null || return 1
  if [ "${DETECTRON2_CUDA_OPS:-0}" = 1 ]; then
    "$PYTHON" -c "import detectron2._C as c, sys; sys.exit(c.get_cuda_version() == 'not available')"
  fi
}
if detectron2_works; then
  step "detectron2 already importable: $("$PYTHON" -c 'import detectron2, os; print(os.path.dirname(detectron2.__file__))')"
else
  if [ -n "${DETECTRON2_SOURCE:-}" ]; then
    [ -e "$DETECTRON2_SOURCE" ] || fail "DETECTRON2_SOURCE=$DETECTRON2_SOURCE does not exist."
    if [ -d "$DETECTRON2_SOURCE" ]; then
      source_dir=$DETECTRON2_SOURCE
    else
      step "unpacking $DETECTRON2_SOURCE"
      mkdir "$work/detectron2"
      case "$DETECTRON2_SOURCE" in
        *.zip) "$PYTHON" -m zipfile -e "$DETECTRON2_SOURCE" "$work/detectron2" ;;
        *) tar -xf "$DETECTRON2_SOURCE" -C "$work/detectron2" ;;
      esac
      setup_py=$(find "$work/detectron2" -maxdepth 2 -name setup.py | head -n 1)
      [ -n "$setup_py" ] || fail "$DETECTRON2_SOURCE holds no setup.py: it is not a detectron2 source archive."
      source_dir=$(dirname "$setup_py")
    fi
  else
    cache=${XDG_CACHE_HOME:-$HOME/.cache}/maskrcnnpp/detectron2-$DETECTRON2_COMMIT
    if [ ! -f "$cache/setup.py" ]; then
      step "fetching detectron2 $DETECTRON2_COMMIT from $DETECTRON2_REPO"
      if git clone --quiet --filter=blob:none "$DETECTRON2_REPO" "$work/clone" 2>/dev/null \
          && git -C "$work/clone" checkout --quiet "$DETECTRON2_COMMIT" 2>/dev/null; then
        mkdir -p "$(dirname "$cache")" && rm -rf "$cache" && mv "$work/clone" "$cache"
      else
        fail "detectron2 is not installed and could not be fetched from $DETECTRON2_REPO.
  Provide it in one of two ways:
    1. give this machine access to $DETECTRON2_REPO (commit $DETECTRON2_COMMIT), or
    2. point DETECTRON2_SOURCE at a local detectron2 source folder or archive (.tar.gz/.zip) of that commit:
       DETECTRON2_SOURCE=/path/to/detectron2 bash scripts/install.sh"
      fi
    fi
    source_dir=$cache
  fi
  "$PYTHON" -m pip install --quiet --disable-pip-version-check ninja 2>/dev/null || true  # parallel compile
  if [ "${DETECTRON2_CUDA_OPS:-0}" = 1 ]; then
    step "building detectron2 from $source_dir with its CUDA kernels (FORCE_CUDA=1; the longest step)"
    FORCE_CUDA=1 pip_install --no-build-isolation "$source_dir"
  else
    step "building detectron2 from $source_dir, C++ ops only (DETECTRON2_CUDA_OPS=1 adds the CUDA kernels)"
    # detectron2 compiles its CUDA kernels wherever it sees a GPU: hide it for the build
    FORCE_CUDA=0 CUDA_VISIBLE_DEVICES="" pip_install --no-build-isolation "$source_dir"
  fi
  detectron2_works || fail "detectron2 was built from $source_dir but does not import; see the messages above."
fi

# 4. OpenCV, only where none imports: its distributions (opencv-python, -headless, -contrib) clash.
if "$PYTHON" -c "import cv2" 2>/dev/null; then
  step "OpenCV already importable: $("$PYTHON" -c 'import cv2; print(cv2.__version__)')"
else
  pip_install --quiet opencv-python-headless
fi

# 5. This package, editable, with its dependencies (OpenCV, pycocotools, fvcore, ...) and $EXTRAS.
step "installing maskrcnnpp (editable) with the extras $EXTRAS"
pip_install --quiet --no-build-isolation -e ".[$EXTRAS]"
"$PYTHON" -c "import maskrcnnpp" || fail "maskrcnnpp does not import after installation."
step "done"
