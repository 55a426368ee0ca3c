#!/usr/bin/env bash
# Make a folder of wheels from which scripts/install.sh sets Mask R-CNN++ up on a machine that
# reaches no package index. Run it where pip reaches one, for the offline machine's Python:
#
#   bash scripts/download_wheels.sh DIR                          # for this machine's Python
#   bash scripts/download_wheels.sh DIR --python-version 3.12    # for another Python (x86-64 Linux)
#   bash scripts/download_wheels.sh DIR --with-torch             # add torch + torchvision (the installer's range, or TORCH_VERSION/TORCHVISION_VERSION; GBs)
#
# then, on the offline machine:  WHEELS=DIR DETECTRON2_SOURCE=detectron2.tar.gz bash scripts/install.sh
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
usage="usage: bash scripts/download_wheels.sh DIR [--python-version X.Y] [--with-torch]"
[ $# -ge 1 ] && [ "${1#-}" = "$1" ] || { echo "$usage" >&2; exit 2; }
dest=$1; shift
target=()
requirements=(-r scripts/requirements-offline.txt)
while [ $# -gt 0 ]; do
  case $1 in
    --python-version)
      [ $# -ge 2 ] || { echo "$usage" >&2; exit 2; }
      # manylinux tags pip must name one by one when it downloads for another Python
      target=(--python-version "$2" --implementation cp --platform manylinux2014_x86_64
              --platform manylinux_2_17_x86_64 --platform manylinux_2_27_x86_64
              --platform manylinux_2_28_x86_64 --platform linux_x86_64)
      shift 2 ;;
    --with-torch)
      # the installer's choice: its supported range, or the pair TORCH_VERSION / TORCHVISION_VERSION name
      read -r -a pair <<< "$("$PYTHON" scripts/check_torch.py --requirements "${TORCH_VERSION:-}" "${TORCHVISION_VERSION:-}")"
      requirements+=("${pair[@]}")
      shift ;;
    *) echo "unknown option $1; $usage" >&2; exit 2 ;;
  esac
done
mkdir -p "$dest"
pip=("$PYTHON" -m pip --disable-pip-version-check)

# Packages published only as source (pure Python, such as fvcore and antlr4-python3-runtime) are
# found by resolving the list for this Python first, and built into wheels here: a pure-Python
# wheel installs on any Python.
sources=$(mktemp -d)
trap 'rm -rf "$sources"' EXIT
"${pip[@]}" download --quiet -d "$sources" -r scripts/requirements-offline.txt
for sdist in "$sources"/*.tar.gz "$sources"/*.zip; do
  [ -e "$sdist" ] || continue
  echo "[wheels] building a wheel of $(basename "$sdist") (published as source only)"
  "${pip[@]}" wheel --quiet --no-deps -w "$dest" "$sdist"
done
# Everything with its dependencies, the wheels built above standing in for their sources.
"${pip[@]}" download --quiet --only-binary=:all: --find-links "$dest" "${target[@]}" -d "$dest" \
  "${requirements[@]}"
echo "[wheels] $(ls "$dest" | wc -l) wheels in $dest"
