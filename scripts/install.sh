#!/usr/bin/env bash
# One-command set-up of Mask R-CNN++ into the active Python environment (venv, conda or system).
# Idempotent: what is already installed and working is left alone.
#
#   bash scripts/install.sh
#   DETECTRON2_SOURCE=/path/to/detectron2 bash scripts/install.sh   # offline: a local source folder or archive
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
TORCH_VERSION=2.14.1           # torch and torchvision are pinned as a matching pair
TORCHVISION_VERSION=0.29.2
DETECTRON2_COMMIT=02b5c4e295e990042a714712c21dc79b731e8833
DETECTRON2_REPO=https://github.com/facebookresearch/detectron2.git
PIP=("$PYTHON" -m pip install --disable-pip-version-check)

step() { echo "[install] $*"; }
fail() { echo "[install] ERROR: $*" >&2; exit 1; }

torch_pair_works() {
  "$PYTHON" - "$TORCH_VERSION" "$TORCHVISION_VERSION" <<'PY' 2>/dev/null
import sys
import torch, torchvision
from torchvision.ops import nms
want_torch, want_vision = sys.argv[1:]
assert torch.__version__.split("+")[0] == want_torch, torch.__version__
assert torchvision.__version__.split("+")[0] == want_vision, torchvision.__version__
keep = nms(torch.tensor([[0.0, 0, 10, 10], [1, 1, 10, 10]]), torch.tensor([0.9, 0.8]), 0.5)
assert keep.tolist() == [0]
PY
}

detectron2_works() {
  "$PYTHON" -c "import detectron2, detectron2._C, detectron2.model_zoo" 2>/dev/null
}

step "python: $("$PYTHON" -c 'import sys; print(sys.executable, sys.version.split()[0])')"

# 1. torch + torchvision as a matching pair, verified by running torchvision's compiled nms.
if torch_pair_works; then
  step "torch $TORCH_VERSION + torchvision $TORCHVISION_VERSION already work"
else
  step "installing torch==$TORCH_VERSION torchvision==$TORCHVISION_VERSION"
  "${PIP[@]}" "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION"
  torch_pair_works || fail "torchvision.ops.nms does not run with the installed torch ($("$PYTHON" -c 'import torch; print(torch.__version__)' 2>&1)).
  A torch build that satisfies the pin but not torchvision's (e.g. a local CPU-only wheel) is installed.
  Fix: $PYTHON -m pip install --force-reinstall torch==$TORCH_VERSION torchvision==$TORCHVISION_VERSION from the package registry."
fi

# 2. Build tools and libraries detectron2 and this package need. setuptools<81 still ships
#    pkg_resources, which detectron2.model_zoo imports.
if "$PYTHON" -c "import pkg_resources, wheel" 2>/dev/null; then
  step "setuptools with pkg_resources already present"
else
  "${PIP[@]}" --quiet "setuptools>=70,<81" wheel
fi

# 3. detectron2: not on the package registry, so built from source against the installed torch.
if detectron2_works; then
  step "detectron2 already importable: $("$PYTHON" -c 'import detectron2, os; print(os.path.dirname(detectron2.__file__))')"
else
  source_dir=""
  if [ -n "${DETECTRON2_SOURCE:-}" ]; then
    [ -e "$DETECTRON2_SOURCE" ] || fail "DETECTRON2_SOURCE=$DETECTRON2_SOURCE does not exist."
    if [ -d "$DETECTRON2_SOURCE" ]; then
      source_dir=$DETECTRON2_SOURCE
    else
      source_dir=$(mktemp -d)
      trap 'rm -rf "$source_dir"' EXIT
      step "unpacking $DETECTRON2_SOURCE"
      case "$DETECTRON2_SOURCE" in
        *.zip) "$PYTHON" -m zipfile -e "$DETECTRON2_SOURCE" "$source_dir" ;;
        *) tar -xf "$DETECTRON2_SOURCE" -C "$source_dir" ;;
      esac
      setup_py=$(find "$source_dir" -maxdepth 2 -name setup.py | head -n 1)
      [ -n "$setup_py" ] || fail "$DETECTRON2_SOURCE holds no setup.py: it is not a detectron2 source archive."
      source_dir=$(dirname "$setup_py")
    fi
  else
    cache=${XDG_CACHE_HOME:-$HOME/.cache}/maskrcnnpp/detectron2-$DETECTRON2_COMMIT
    if [ ! -f "$cache/setup.py" ]; then
      step "fetching detectron2 $DETECTRON2_COMMIT from $DETECTRON2_REPO"
      tmp=$(mktemp -d)
      if git clone --quiet --filter=blob:none "$DETECTRON2_REPO" "$tmp" 2>/dev/null \
          && git -C "$tmp" checkout --quiet "$DETECTRON2_COMMIT" 2>/dev/null; then
        mkdir -p "$(dirname "$cache")" && rm -rf "$cache" && mv "$tmp" "$cache"
      else
        rm -rf "$tmp"
        fail "detectron2 is not installed and could not be fetched from $DETECTRON2_REPO.
  Provide it in one of two ways:
    1. give this machine access to $DETECTRON2_REPO (commit $DETECTRON2_COMMIT), or
    2. point DETECTRON2_SOURCE at a local detectron2 source folder or archive (.tar.gz/.zip) of that commit:
       DETECTRON2_SOURCE=/path/to/detectron2 bash scripts/install.sh"
      fi
    fi
    source_dir=$cache
  fi
  step "building detectron2 from $source_dir against torch $TORCH_VERSION (takes a few minutes)"
  "$PYTHON" -m pip install --quiet ninja 2>/dev/null || true
  "${PIP[@]}" --no-build-isolation "$source_dir"
  detectron2_works || fail "detectron2 was built from $source_dir but does not import; see the messages above."
fi

# 4. This package, editable, with its dependencies (OpenCV, pycocotools, fvcore, ...) and test extras.
step "installing maskrcnnpp (editable) with test extras"
"${PIP[@]}" --quiet --no-build-isolation -e ".[test]"
"$PYTHON" -c "import maskrcnnpp" || fail "maskrcnnpp does not import after installation."
step "done"
