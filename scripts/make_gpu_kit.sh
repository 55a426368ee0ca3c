#!/usr/bin/env bash
# Build the kit from which scripts/gpu_lease.sh sets Mask R-CNN++ up on a GPU machine that reaches
# no package index (Python 3.12 with a CUDA torch, as the project's lent machines have):
#
#   bash scripts/make_gpu_kit.sh [KIT]          # default .gpu_kit (ignored by git), in the checkout
#
# Run it here, where pip reaches a package index. The kit holds:
#   detectron2-*.tar.gz   detectron2's source at the pinned commit, from ../shared/gpu-kit
#                         (SHARED_KIT=... names another folder)
#   wheels/               the shared kit's wheels, with the ones scripts/requirements-gpu-kit.txt
#                         names downloaded for Python 3.12 (they replace a shared one of the same
#                         package)
#   dsb2018/              $DETECTRON2_DATASETS/dsb2018 (default datasets/dsb2018) as prepared here,
#                         with image types; grey images stored as one channel (detectron2 reads
#                         them as three), which halves the kit
# and prints the `carry` list and the command for the device tool. The working tree and the kit
# must stay under the 64 MiB that travels with a call; the script refuses a kit beyond it.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
kit=${1:-.gpu_kit}
shared=${SHARED_KIT:-../shared/gpu-kit}
data=${DETECTRON2_DATASETS:-datasets}/dsb2018
limit_mib=64

fail() { echo "make_gpu_kit: error: $*" >&2; exit 2; }
source_archive=$(ls "$shared"/detectron2-*.tar.gz 2>/dev/null | head -n 1)
[ -n "$source_archive" ] || fail "$shared holds no detectron2-*.tar.gz; set SHARED_KIT to the shared GPU kit."
[ -d "$shared/wheels" ] || fail "$shared has no wheels/ folder; set SHARED_KIT to the shared GPU kit."
for split in train val; do
  [ -f "$data/annotations/$split.json" ] || fail "$data/annotations/$split.json does not exist; prepare DSB2018 first:
  $PYTHON datasets/prepare_nuclei.py dsb2018 ../shared/data/dsb2018/stage1_train $data --pieces keep"
done

building=$(mktemp -d "$(dirname "$kit")/.tmp-gpu-kit-XXXXXX")
trap 'rm -rf "$building"' EXIT
echo "[kit] detectron2 source: $source_archive"
cp "$source_archive" "$building/"

echo "[kit] wheels: $shared/wheels + scripts/requirements-gpu-kit.txt for Python 3.12"
mkdir "$building/wheels"
"$PYTHON" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
  --python-version 3.12 --implementation cp --platform manylinux2014_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 --platform linux_x86_64 \
  -d "$building/wheels" -r scripts/requirements-gpu-kit.txt
package() { basename "$1" | cut -d- -f1 | tr 'A-Z_.' 'a-z--'; }  # a wheel's normalized name
downloaded=" $(for w in "$building"/wheels/*.whl; do package "$w"; done | tr '\n' ' ')"
for wheel in "$shared"/wheels/*.whl; do
  case "$downloaded" in
    *" $(package "$wheel") "*) echo "[kit]   $(basename "$wheel") replaced by the downloaded one" ;;
    *) cp "$wheel" "$building/wheels/" ;;
  esac
done

echo "[kit] DSB2018 from $data (grey images as one channel)"
"$PYTHON" - "$data" "$building/dsb2018" <<'EOF'
import os
import shutil
import sys

import cv2
import numpy as np
from tqdm import tqdm

source, target = sys.argv[1:]
shutil.copytree(os.path.join(source, "annotations"), os.path.join(target, "annotations"))
os.makedirs(os.path.join(target, "images"))
for name in tqdm(sorted(os.listdir(os.path.join(source, "images"))), desc="images", unit="image"):
    path = os.path.join(source, "images", name)
    image = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    grey = image.ndim == 3 and np.array_equal(image[:, :, 0], image[:, :, 1]) \
        and np.array_equal(image[:, :, 0], image[:, :, 2])
    if grey:
        ok, encoded = cv2.imencode(".png", image[:, :, 0])
        encoded.tofile(os.path.join(target, "images", name))
    else:
        shutil.copy(path, os.path.join(target, "images", name))
EOF

tree_bytes=$(git ls-files -z | xargs -0 stat -c %s | paste -sd+ | bc)
kit_bytes=$(du -sb "$building" | cut -f1)
total_mib=$(( (tree_bytes + kit_bytes) / 1048576 ))
[ "$total_mib" -lt "$limit_mib" ] || fail "the working tree ($((tree_bytes / 1048576)) MiB) and the kit \
($((kit_bytes / 1048576)) MiB) make $total_mib MiB, over the $limit_mib MiB a device call carries."
rm -rf "$kit"
mv "$building" "$kit"
trap - EXIT
echo "[kit] $kit: $(ls "$kit/wheels" | wc -l) wheels, $(ls "$kit/dsb2018/images" | wc -l) images; \
$((kit_bytes / 1048576)) MiB, with the working tree $total_mib of $limit_mib MiB"
echo "[kit] the device call (run): carry [\"$kit\"], timeout_s 600, command:"
echo "  PYTHONUNBUFFERED=1 bash scripts/gpu_lease.sh --kit $kit --out \"\$OUT\""
