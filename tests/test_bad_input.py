"""Bad input gives one clear error that says what is wrong and how to fix it, and writes nothing.

The matrix runs every tool's ``main`` as its command line does (through ``cli.run``) on one
mistake each, and asserts: exit code 2, one ``error:`` line on stderr that names the problem, no
traceback, and no output written. A few cases run the real command in a subprocess as well.
"""
import datetime
import json
import os
import re
import pickle
import runpy

import cv2
import numpy as np
import pytest
import torch
from conftest import REPO, TINY_TRAINING, load_tool, run_tool
from detectron2.modeling import build_model

from maskrcnnpp import cli
from maskrcnnpp.config_loader import build_cfg
from maskrcnnpp.data.coco_io import coco_dict, encode_mask

benchmark = load_tool("benchmark")
compare = load_tool("compare")
evaluate = load_tool("evaluate")
predict = load_tool("predict")
train_net = load_tool("train_net")

QUICKSTART = os.path.join(REPO, "configs", "quickstart_synthetic.yaml")
DENSE = os.path.join(REPO, "configs", "quickstart_synthetic_dense.yaml")
LAZY_DENSE = os.path.join(REPO, "configs", "lazy", "maskrcnnpp_R50.py")
PREPARE = runpy.run_path(os.path.join(REPO, "datasets", "prepare_nuclei.py"))["main"]
no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="tests the machine without a GPU")


def error_lines(stderr):
    """stderr without progress bars, the CPU fallback notice and torch's own log lines (such as
    ``W1122 ... No CUDA runtime is found``): what a mistake printed."""
    return [line for line in stderr.replace("\r", "\n").splitlines()
            if line.strip() and "%|" not in line and not line.startswith(("No GPU", "Running on"))
            and not re.match(r"[IWE]\d{4} ", line)]


def assert_one_clear_error(main, argv, message, capsys, untouched=()):
    code = cli.run(main, [str(a) for a in argv])
    err = capsys.readouterr().err
    if "Traceback" in err:
        print(err)
    lines = error_lines(err)
    assert code == 2, err[-2000:]
    assert "Traceback" not in err
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert message in lines[0], lines[0]
    for path in untouched:
        assert not os.path.exists(path), f"{path} was written"


# --- the materials of the mistakes -----------------------------------------------------------


def coco_set(folder, name, images=1, annotated=True, size=(64, 64), image_mode="png8"):
    """A tiny COCO set with ``images`` images and the DATASETS overrides that use it."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    height, width = size
    entries, annotations = [], []
    mask = np.zeros(size, bool)
    mask[10:20, 10:20] = True
    for index in range(1, images + 1):
        file_name = f"{index}.png"
        pixels = np.zeros((height, width, 3), np.uint16 if image_mode == "png16" else np.uint8)
        pixels[mask] = 3000 if image_mode == "png16" else 200
        cv2.imwrite(str(folder / "images" / file_name), pixels[:, :, 0] if image_mode == "png16" else pixels)
        entries.append({"id": index, "file_name": file_name, "height": height, "width": width})
        if annotated:
            annotations.append({"id": index, "image_id": index, "category_id": 1, "iscrowd": 0,
                                "segmentation": encode_mask(mask), "area": 100,
                                "bbox": [10, 10, 10, 10]})
    (folder / "annotations.json").write_text(json.dumps(coco_dict(entries, annotations, name)))
    entry = str([[name, str(folder / "annotations.json"), str(folder / "images")]])
    return ["DATASETS.COCO_NUCLEI", entry, "DATASETS.TRAIN", f"('{name}',)",
            "DATASETS.TEST", f"('{name}',)"]


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """Checkpoints: FPN quickstart weights (.pth), the same file cut in half, and a pickle of
    more than weights."""
    folder = tmp_path_factory.mktemp("weights")
    cfg = build_cfg(QUICKSTART, ["MODEL.DEVICE", "cpu"])
    torch.save({"model": build_model(cfg).state_dict()}, folder / "fpn.pth")
    data = (folder / "fpn.pth").read_bytes()
    (folder / "truncated.pth").write_bytes(data[: len(data) // 2])
    with open(folder / "model.pkl", "wb") as f:  # a pickle of more than weights
        pickle.dump({"model": {}, "__author__": "x", "saved": datetime.date(2024, 1, 1)}, f)
    return folder


def train(tmp_path, *opts, config=QUICKSTART, output=None):
    """train_net's command line: the config, tiny settings, ``opts`` and OUTPUT_DIR last."""
    return ["--config-file", config, *TINY_TRAINING, *opts, "OUTPUT_DIR", output or tmp_path / "out"]


def with_image(folder, name, write):
    """A folder holding one image written by ``write(path)``."""
    folder.mkdir(parents=True, exist_ok=True)
    write(str(folder / name))
    return folder


def dsb_source(folder, masks, image=None):
    """A one-image DSB2018-layout folder with the given mask arrays (written as PNG)."""
    (folder / "a" / "images").mkdir(parents=True)
    (folder / "a" / "masks").mkdir()
    cv2.imwrite(str(folder / "a" / "images" / "a.png"),
                np.zeros((32, 32, 3), np.uint8) if image is None else image)
    for index, mask in enumerate(masks):
        cv2.imwrite(str(folder / "a" / "masks" / f"m{index}.png"), mask)
    return folder


def two_valued_disc():
    """A disc of 255 with a stripe of 128: a mask with two foreground values (e.g. a JPEG)."""
    mask = disc_mask()
    mask[10, 6:14] = 128
    return mask


def disc_mask(value=255, channels=1):
    mask = np.zeros((32, 32), np.uint8)
    cv2.circle(mask, (10, 10), 5, value, -1)
    return np.dstack([mask] * channels) if channels > 1 else mask


# --- train_net: config, model, weights, data, output --------------------------------------------

TRAIN_CASES = {
    "config file missing": (lambda t, w: ["--config-file", t / "no_such.yaml"], "does not exist"),
    "misspelled key": (lambda t, w: train(t, "SOLVER.MAX_ITERS", "5"), "Did you mean 'SOLVER.MAX_ITER'?"),
    "wrong value type": (lambda t, w: train(t, "SOLVER.MAX_ITER", "'many'"), "SOLVER.MAX_ITER"),
    "unknown topology": (lambda t, w: train(t, "MODEL.DENSE_FPN.TOPOLOGY", "densee", config=DENSE),
                         "Did you mean 'dense'?"),
    "unknown fusion": (lambda t, w: train(t, "MODEL.DENSE_FPN.FUSION", "max", config=DENSE),
                       "MODEL.DENSE_FPN.FUSION='max' is not valid"),
    "identity block on concat": (lambda t, w: train(t, "MODEL.DENSE_FPN.NODE_BLOCK", "identity", config=DENSE),
                                 "needs MODEL.DENSE_FPN.FUSION='sum'"),
    "depth the topology lacks": (lambda t, w: train(t, "MODEL.DENSE_FPN.TOPOLOGY", "fpn",
                                                    "MODEL.DENSE_FPN.INFERENCE_DEPTH", "1", config=DENSE),
                                 "MODEL.DENSE_FPN.INFERENCE_DEPTH=1 is not valid"),
    "unknown augmentation": (lambda t, w: train(t, "INPUT.NUCLEI_AUG.NAMES", "['rot9']"), "Did you mean 'rot90'"),
    "tile overlap above tile size": (lambda t, w: train(t, "TEST.TILE.OVERLAP", "900"),
                                     "need SIZE > 0, 0 <= OVERLAP < SIZE"),
    "unknown mask loss": (lambda t, w: train(t, "MODEL.ROI_MASK_HEAD.LOSS", "Dice"),
                          "MODEL.ROI_MASK_HEAD.LOSS='Dice' is not valid"),
    "negative workers": (lambda t, w: train(t, "DATALOADER.NUM_WORKERS", "-2"), "DATALOADER.NUM_WORKERS=-2"),
    "unknown device": (lambda t, w: train(t, "MODEL.DEVICE", "tpu"), "MODEL.DEVICE='tpu' is not valid"),
    "unregistered dataset": (lambda t, w: train(t, "DATASETS.TRAIN", "('nuclei_synthetic_trian',)"),
                             "Did you mean 'nuclei_synthetic_train'?"),
    "COCO_NUCLEI entry of two fields": (lambda t, w: train(t, "DATASETS.COCO_NUCLEI", "[['x', 'y.json']]"),
                                        "must be [name, json_file, image_root]"),
    "annotation file missing": (lambda t, w: train(t, "DATASETS.COCO_NUCLEI", str([["gone", str(t / "no.json"), str(t)]]),
                                                   "DATASETS.TRAIN", "('gone',)"), "does not exist"),
    "annotation file not JSON": (lambda t, w: [(t / "bad.json").write_text("{oops"), (t / "im").mkdir(),
                                               train(t, "DATASETS.COCO_NUCLEI", str([["notjson", str(t / "bad.json"), str(t / "im")]]),
                                                     "DATASETS.TRAIN", "('notjson',)")][-1], "is not valid JSON"),
    "not a COCO file": (lambda t, w: [(t / "bad.json").write_text('{"images": []}'), (t / "im").mkdir(),
                                      train(t, "DATASETS.COCO_NUCLEI", str([["notcoco", str(t / "bad.json"), str(t / "im")]]),
                                            "DATASETS.TRAIN", "('notcoco',)")][-1], "is not a COCO instance file"),
    "no image has annotations": (lambda t, w: train(t, *coco_set(t / "d", "unannotated", 2, annotated=False)),
                                 "none of its 2 images has annotations"),
    "images missing": (lambda t, w: [opts := coco_set(t / "d", "missing_images", 3),
                                     [os.remove(t / "d" / "images" / f"{i}.png") for i in (1, 2)],
                                     train(t, *opts)][-1], "2 of its 3 images cannot be used"),
    "image not an image": (lambda t, w: [opts := coco_set(t / "d", "corrupt_image", 1),
                                         (t / "d" / "images" / "1.png").write_text("no image"),
                                         train(t, *opts)][-1], "is not an image file"),
    "image of another size": (lambda t, w: [opts := coco_set(t / "d", "resized_image", 1),
                                            cv2.imwrite(str(t / "d" / "images" / "1.png"), np.zeros((20, 30), np.uint8)),
                                            train(t, *opts)][-1], "is 30x20 but its COCO entry says 64x64"),
    "16-bit training image": (lambda t, w: train(t, *coco_set(t / "d", "deep_images", 1, image_mode="png16")),
                              "is not 8-bit"),
    "eval-only without weights": (lambda t, w: ["--eval-only", *train(t, "MODEL.WEIGHTS", "nope.pth")],
                                  "--eval-only needs trained weights"),
    "weights file missing": (lambda t, w: train(t, "MODEL.WEIGHTS", t / "none.pth"), "does not exist"),
    "truncated checkpoint": (lambda t, w: train(t, "MODEL.WEIGHTS", w / "truncated.pth"),
                             "truncated, corrupt or not a checkpoint"),
    "pickled weights": (lambda t, w: train(t, "MODEL.WEIGHTS", w / "model.pkl"), "is a pickle that holds datetime.date"),
    "weights of another architecture": (lambda t, w: train(t, "MODEL.WEIGHTS", w / "fpn.pth", config=DENSE),
                                        "The weights do not fit this model"),
    "output folder under a file": (lambda t, w: [(t / "file").write_text("x"), train(t, output=t / "file" / "run")][-1],
                                   "is a file, not a folder"),
    "LazyConfig override as KEY VALUE": (lambda t, w: ["--config-file", LAZY_DENSE, "train.max_iter", "5"],
                                         "is written key=value, e.g. train.max_iter=100"),
    "LazyConfig unknown topology": (lambda t, w: ["--config-file", LAZY_DENSE, "model.backbone.topology=densee"],
                                    "Did you mean 'dense'?"),
    "LazyConfig that fails to load": (lambda t, w: [(t / "broken.py").write_text("model = undefined_name\n"),
                                                    "--config-file", t / "broken.py"][1:], "fails to load: NameError"),
    "LazyConfig without a model": (lambda t, w: [(t / "empty.py").write_text("x = 1\n"),
                                                 "--config-file", t / "empty.py"][1:], "defines no model, dataloader"),
}


@pytest.mark.parametrize("case", TRAIN_CASES, ids=str)
def test_train_net(case, tiny_nuclei, weights, tmp_path, capsys):
    make_argv, message = TRAIN_CASES[case]
    argv = make_argv(tmp_path, weights)
    words = [str(a) for a in argv]
    if "OUTPUT_DIR" in words and not {"DATASETS.COCO_NUCLEI", "DATASETS.TRAIN"} & set(words):
        argv = [*argv[:-2], *tiny_nuclei["opts"], *argv[-2:]]  # the tiny set, unless the case sets data
    assert_one_clear_error(train_net.main, argv, message, capsys, untouched=[tmp_path / "out"])


@no_gpu
@pytest.mark.parametrize("opts, message", [
    (["MODEL.DEVICE", "cuda"], "MODEL.DEVICE='cuda' needs a GPU, but no GPU is visible here"),
    (["SOLVER.AMP.ENABLED", "True"], "which on the CPU is bfloat16 autocast, but this CPU (AVX2) "
     "lacks the bfloat16 instructions (AVX512-BF16 or AMX) that CPU mixed precision needs. Drop "
     "the override to train in float32, or run on a GPU (MODEL.DEVICE cuda)."),
])
def test_train_net_without_a_gpu(opts, message, tiny_nuclei, tmp_path, capsys, cpu_without_bfloat16):
    assert_one_clear_error(train_net.main, train(tmp_path, *tiny_nuclei["opts"], *opts), message,
                           capsys, untouched=[tmp_path / "out"])


@no_gpu
def test_the_gpu_recipe_falls_back_to_float32_on_a_cpu_without_bfloat16(cpu_without_bfloat16):
    cfg = build_cfg(os.path.join(REPO, "configs", "maskrcnnpp_R50.yaml"))
    assert (cfg.MODEL.DEVICE, cfg.SOLVER.AMP.ENABLED) == ("cpu", False)


@no_gpu
def test_the_gpu_recipe_keeps_mixed_precision_on_a_cpu_with_bfloat16(cpu_with_bfloat16):
    cfg = build_cfg(os.path.join(REPO, "configs", "maskrcnnpp_R50.yaml"))
    assert (cfg.MODEL.DEVICE, cfg.SOLVER.AMP.ENABLED) == ("cpu", True)


# --- predict --------------------------------------------------------------------------------------

PREDICT_CASES = {
    "weights not a file": (lambda t, w: ["--weights", t / "none.pth", "--input", t], "is not a file"),
    "input missing": (lambda t, w: ["--weights", w / "fpn.pth", "--input", t / "nothing"],
                      "is neither an image file nor a folder"),
    "folder without images": (lambda t, w: [(t / "empty").mkdir(), "--weights", w / "fpn.pth", "--input", t / "empty"][1:],
                              "holds no images"),
    "two inputs with one name": (lambda t, w: ["--weights", w / "fpn.pth", "--input",
                                               with_image(t / "a", "x.png", lambda p: cv2.imwrite(p, np.zeros((8, 8), np.uint8))) / "x.png",
                                               with_image(t / "b", "x.png", lambda p: cv2.imwrite(p, np.zeros((8, 8), np.uint8))) / "x.png"],
                                 "Several inputs are named 'x'"),
    "weights of another architecture": (lambda t, w: ["--config-file", DENSE, "--weights", w / "fpn.pth", "--input",
                                                      with_image(t / "a", "x.png", lambda p: cv2.imwrite(p, np.zeros((8, 8), np.uint8)))],
                                        "The weights do not fit this model"),
    "pickled weights": (lambda t, w: ["--weights", w / "model.pkl", "--input",
                                      with_image(t / "a", "x.png", lambda p: cv2.imwrite(p, np.zeros((8, 8), np.uint8)))],
                        "is a pickle that holds datetime.date"),
    "output under a file": (lambda t, w: [(t / "file").write_text("x"), "--weights", w / "fpn.pth", "--input",
                                          with_image(t / "a", "x.png", lambda p: cv2.imwrite(p, np.zeros((8, 8), np.uint8))),
                                          "--output", t / "file" / "out"][1:], "is a file, not a folder"),
    "output of an earlier run": (lambda t, w: [(t / "earlier").mkdir(), "--weights", w / "fpn.pth", "--input",
                                               with_image(t / "a", "x.png", lambda p: cv2.imwrite(p, np.zeros((8, 8), np.uint8))),
                                               "--output", t / "earlier"][1:], "already exists; use --overwrite"),
    "output is the input folder": (lambda t, w: ["--weights", w / "fpn.pth", "--overwrite", "--input",
                                                 with_image(t / "a", "x.png", lambda p: cv2.imwrite(p, np.zeros((8, 8), np.uint8))),
                                                 "--output", t / "a"], "is or contains the input"),
    "output holds an input image": (lambda t, w: ["--weights", w / "fpn.pth", "--overwrite", "--input",
                                                  with_image(t / "a", "x.png", lambda p: cv2.imwrite(p, np.zeros((8, 8), np.uint8))) / "x.png",
                                                  "--output", t], "is or contains the input"),
}


@pytest.mark.parametrize("case", PREDICT_CASES, ids=str)
def test_predict(case, weights, tmp_path, capsys):
    argv = [str(a) for a in PREDICT_CASES[case][0](tmp_path, weights)]
    if "--config-file" not in argv:
        argv = ["--config-file", QUICKSTART, *argv]
    if "--output" not in argv:
        argv += ["--output", str(tmp_path / "out")]
    assert_one_clear_error(predict.main, argv, PREDICT_CASES[case][1], capsys,
                           untouched=[tmp_path / "out", tmp_path / "file" / "out"])


# --- evaluate ------------------------------------------------------------------------------------


def evaluation_files(folder, predictions, change_gt=lambda gt: None):
    mask = np.zeros((10, 20), bool)
    mask[:4, :4] = True
    gt = coco_dict([{"id": 7, "file_name": "a.png", "height": 10, "width": 20}],
                   [{"id": 1, "image_id": 7, "category_id": 1, "iscrowd": 0, "area": 16,
                     "bbox": [0, 0, 4, 4], "segmentation": encode_mask(mask)}], "gt")
    change_gt(gt)
    (folder / "gt.json").write_text(json.dumps(gt))
    result = {"image_id": 1, "category_id": 1, "segmentation": encode_mask(mask), "score": 0.9}
    (folder / "pred.json").write_text(predictions if isinstance(predictions, str)
                                      else json.dumps([{**result, **p} for p in predictions]))
    return ["--gt", folder / "gt.json", "--pred", folder / "pred.json", "--out", folder / "eval"]


EVALUATE_CASES = {
    "ground truth missing": (lambda t: ["--gt", t / "none.json", "--pred", t / "none.json"], "does not exist"),
    "predictions not JSON": (lambda t: evaluation_files(t, "{oops"), "is not valid JSON"),
    "a predicted file the ground truth lacks": (lambda t: evaluation_files(t, [{"file_name": "b.png"}]),
                                                "not in the ground truth, e.g. ['b.png']"),
    "file names on some predictions only": (lambda t: evaluation_files(t, [{"file_name": "a.png"}, {}]),
                                            "1 of 2 predictions carry no file_name"),
    "image ids the ground truth lacks": (lambda t: evaluation_files(t, [{"image_id": 99}]),
                                         "absent from the ground truth, e.g. [99]"),
    "a second category": (lambda t: evaluation_files(t, [{"image_id": 7}], lambda gt: gt.update(categories=[
        *gt["categories"], {"id": 2, "name": "cytoplasm"}])), "has 2 categories [1, 2]; nuclei are one category"),
    "predictions of another category": (lambda t: evaluation_files(t, [{"image_id": 7, "category_id": 2}]),
                                        "category_id 2, which is not in the ground truth's categories [1]"),
    "two images with one id": (lambda t: evaluation_files(t, [{"image_id": 7}], lambda gt: gt["images"].append(
        {"id": 7, "file_name": "b.png", "height": 10, "width": 20})), "uses image id(s) 7 more than once"),
    "two annotations with one id": (lambda t: evaluation_files(t, [{"image_id": 7}], lambda gt: gt["annotations"].append(
        dict(gt["annotations"][0]))), "uses annotation id(s) 1 more than once"),
    "an annotation of an unknown image": (lambda t: evaluation_files(t, [{"image_id": 7}], lambda gt: gt["annotations"][0].update(
        image_id=8)), "1 annotation(s) name an unknown image (e.g. annotation 1 has image_id 8)"),
    "an annotation of an unknown category": (lambda t: evaluation_files(t, [{"image_id": 7}], lambda gt: gt["annotations"][0].update(
        category_id=3)), "1 annotation(s) name an unknown category"),
    "RLE counts past the mask's end": (lambda t: evaluation_files(t, [{"image_id": 7, "segmentation": {
        "size": [10, 20], "counts": [0, 150, 100]}}]), "RLE counts are not runs of a 10x20 mask"),
    "maxDets below COCO's": (lambda t: [*evaluation_files(t, [{"image_id": 7}]), "--max-dets", "50"],
                             "maxDets must be an integer of at least 100"),
    "output under a file": (lambda t: [(t / "file").write_text("x"),
                                       *evaluation_files(t, [{"image_id": 7}])[:-1], t / "file" / "eval"][1:],
                            "is a file, not a folder"),
}


@pytest.mark.parametrize("case", EVALUATE_CASES, ids=str)
def test_evaluate(case, tmp_path, capsys):
    make_argv, message = EVALUATE_CASES[case]
    assert_one_clear_error(evaluate.main, make_argv(tmp_path), message, capsys,
                           untouched=[tmp_path / "eval"])


def test_evaluate_pairs_predictions_by_file_name_not_by_their_own_numbering(tmp_path, capsys):
    # tools/predict.py numbers images 1..N; the ground truth calls the same image 7
    argv = evaluation_files(tmp_path, [{"image_id": 1, "file_name": "a.png"}])
    assert cli.run(evaluate.main, [str(a) for a in argv]) == 0
    metrics = json.loads((tmp_path / "eval" / "nuclei_metrics.json").read_text())
    assert metrics["mask_AP"] == pytest.approx(100) and metrics["iou"] == 1.0


def test_evaluate_computes_the_area_a_ground_truth_lacks(tmp_path):
    argv = evaluation_files(tmp_path, [{"image_id": 7}], lambda gt: gt["annotations"][0].pop("area"))
    assert cli.run(evaluate.main, [str(a) for a in argv]) == 0
    metrics = json.loads((tmp_path / "eval" / "nuclei_metrics.json").read_text())
    assert metrics["mask_AP"] == pytest.approx(100) and metrics["mask_APs"] == pytest.approx(100)


# --- compare and benchmark ---------------------------------------------------------------------

COMPARE_CASES = {
    "seed among the overrides": (lambda t: ["--config-file", QUICKSTART, "--output", t / "cmp", "SEED", "3"],
                                 "sets SEED for each run"),
    "two configs with one name": (lambda t: ["--config-file", QUICKSTART, QUICKSTART, "--output", t / "cmp"],
                                  "share a file name"),
    "configs with other schedules": (lambda t: [(t / "longer.yaml").write_text(f'_BASE_: "{QUICKSTART}"\nSOLVER:\n  MAX_ITER: 7\n'),
                                                "--config-file", QUICKSTART, t / "longer.yaml", "--output", t / "cmp"][1:],
                                     "same data and schedule"),
    "output under a file": (lambda t: [(t / "file").write_text("x"), "--config-file", QUICKSTART,
                                       "--output", t / "file" / "cmp"][1:], "is a file, not a folder"),
    "a report of other seeds": (lambda t: [(t / "earlier").mkdir(), (t / "earlier" / "compare.json").write_text(json.dumps(
        {"configs": [{"name": "quickstart_synthetic"}], "seeds": [0, 1]})), "--config-file", QUICKSTART, "--seeds", "1", "2",
        "--output", t / "earlier"][2:], "over seeds [0, 1]; this comparison lacks seed 0 and would replace it"),
}


@pytest.mark.parametrize("case", COMPARE_CASES, ids=str)
def test_compare(case, tmp_path, capsys):
    make_argv, message = COMPARE_CASES[case]
    assert_one_clear_error(compare.main, make_argv(tmp_path), message, capsys,
                           untouched=[tmp_path / "cmp"])


BENCHMARK_CASES = {
    "report of another format": (["--out", "{t}/report.txt"], ".json or .md"),
    "image too small": (["--image-size", "16"], "image_size=16 is too small"),
    "amp on a cpu without bfloat16": (["--device", "cpu", "--amp"], "amp True asks for mixed "
                                      "precision, which on the CPU is bfloat16 autocast, but this CPU"),
}


@pytest.mark.parametrize("case", BENCHMARK_CASES, ids=str)
def test_benchmark(case, tmp_path, capsys, cpu_without_bfloat16):
    options, message = BENCHMARK_CASES[case]
    argv = ["--config-file", QUICKSTART, *[o.format(t=tmp_path) for o in options]]
    assert_one_clear_error(benchmark.main, argv, message, capsys, untouched=[tmp_path / "report.txt"])


@no_gpu
def test_benchmark_on_cuda_without_a_gpu(capsys):
    assert_one_clear_error(benchmark.main, ["--config-file", QUICKSTART, "--device", "cuda"],
                           "Measuring on device 'cuda' needs a GPU, but no GPU is visible", capsys)


# --- prepare_nuclei ------------------------------------------------------------------------------

PREPARE_CASES = {
    "source missing": (lambda t: ["dsb2018", t / "nothing", t / "out"], "does not exist"),
    "output exists": (lambda t: [dsb_source(t / "src", [disc_mask()]), (t / "out").mkdir(),
                                 "dsb2018", t / "src", t / "out"][2:], "already exists; use --overwrite"),
    "output inside the source": (lambda t: ["dsb2018", dsb_source(t / "src", [disc_mask()]), t / "src" / "out"],
                                 "lies inside the input"),
    "mask with differing channels": (lambda t: ["dsb2018", dsb_source(t / "src", [
        np.dstack([disc_mask(), np.zeros((32, 32), np.uint8), disc_mask()])]), t / "out"], "channels that differ"),
    "mask not binary": (lambda t: ["dsb2018", dsb_source(t / "src", [two_valued_disc()]), t / "out"],
                        "is not binary"),
    "mask in two pieces": (lambda t: ["dsb2018", dsb_source(t / "src", [
        np.maximum(disc_mask(), np.roll(disc_mask(), 15, axis=1))]), t / "out"], "is in 2 separate pieces"),
    "binary image as a label map": (lambda t: ["labelmap",
                                               with_image(t / "im", "a.png", lambda p: cv2.imwrite(p, np.zeros((32, 32, 3), np.uint8))),
                                               with_image(t / "lab", "a.png", lambda p: cv2.imwrite(p, np.maximum(disc_mask(), np.roll(disc_mask(), 15, axis=0)))),
                                               t / "out"], "looks like a binary mask of all nuclei"),
    "label map with channels": (lambda t: ["labelmap",
                                           with_image(t / "im", "a.png", lambda p: cv2.imwrite(p, np.zeros((32, 32, 3), np.uint8))),
                                           with_image(t / "lab", "a.png", lambda p: cv2.imwrite(p, disc_mask(channels=3))),
                                           t / "out"], "has 3 channels"),
    "label map of another size": (lambda t: ["labelmap",
                                             with_image(t / "im", "a.png", lambda p: cv2.imwrite(p, np.zeros((32, 32, 3), np.uint8))),
                                             with_image(t / "lab", "a.png", lambda p: cv2.imwrite(p, np.zeros((16, 32), np.uint8))),
                                             t / "out"], "masks must match their image"),
    "image without its label map": (lambda t: ["labelmap",
                                               with_image(t / "im", "a.png", lambda p: cv2.imwrite(p, np.zeros((32, 32, 3), np.uint8))),
                                               with_image(t / "lab", "b.png", lambda p: cv2.imwrite(p, disc_mask())),
                                               t / "out"], "have no partner with the same stem"),
    "truncated JPEG image": (lambda t: ["labelmap",
                                        with_image(t / "im", "a.jpg", lambda p: [cv2.imwrite(p, np.full((32, 32, 3), 90, np.uint8)),
                                                                                 open(p, "r+b").truncate(300)]),
                                        with_image(t / "lab", "a.png", lambda p: cv2.imwrite(p, disc_mask())),
                                        t / "out"], "Is the file complete?"),
}


@pytest.mark.parametrize("case", PREPARE_CASES, ids=str)
def test_prepare_nuclei(case, tmp_path, capsys):
    make_argv, message = PREPARE_CASES[case]
    argv = make_argv(tmp_path)
    out = argv[-1]
    existed = os.path.exists(out)
    assert_one_clear_error(PREPARE, argv, message, capsys, untouched=[] if existed else [out])
    leftovers = [name for name in os.listdir(os.path.dirname(out)) if name.startswith(".tmp-")]
    assert not leftovers


# --- real processes ------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_command_line_prints_one_error_line_and_writes_nothing(tmp_path):
    output_dir = tmp_path / "out"
    result = run_tool("train_net.py", "--config-file", "configs/no_such.yaml", "OUTPUT_DIR", output_dir)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert error_lines(result.stderr) == [
        "error: Config file configs/no_such.yaml does not exist. Pass a YAML file such as "
        "configs/maskrcnnpp_R50.yaml, or list the shipped ones with "
        "`python -c 'import maskrcnnpp; print(maskrcnnpp.model_zoo.list_configs())'`."
    ]
    assert not output_dir.exists()


@pytest.mark.slow
def test_missing_data_names_the_prepare_command(tmp_path):
    result = run_tool(
        "train_net.py", "--config-file", QUICKSTART, "DATASETS.TRAIN", "('dsb2018_train',)",
        "OUTPUT_DIR", tmp_path / "out", env={"DETECTRON2_DATASETS": str(tmp_path / "empty")},
    )
    assert result.returncode == 2
    assert "does not exist. Prepare it with: python datasets/prepare_nuclei.py dsb2018" in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_a_diverging_run_stops_with_one_line_naming_the_iteration(tiny_nuclei, tmp_path, capsys):
    argv = train(tmp_path, *tiny_nuclei["opts"], "SOLVER.BASE_LR", "1e6", "SOLVER.MAX_ITER", "20",
                 "SOLVER.CHECKPOINT_PERIOD", "100", "TEST.EVAL_PERIOD", "0")
    code = cli.run(train_net.main, [str(a) for a in argv])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    [line] = [line for line in error_lines(err) if line.startswith("error:")]
    assert re.match(r"error: Training diverged at iteration \d+: the loss became infinite or NaN. "
                    r"Lower SOLVER.BASE_LR \(now 1e\+06\)", line), line


# --- evaluate: the matching table's IoU thresholds ---------------------------------------------


@pytest.mark.parametrize("thresholds, shown", [(["0.5", "1.5"], "1.5"), (["0"], "0.0"),
                                               (["-0.2", "0.5"], "-0.2"), (["nan"], "nan")])
def test_evaluate_refuses_matching_thresholds_outside_0_1(thresholds, shown, tmp_path, capsys):
    argv = [*evaluation_files(tmp_path, [{"image_id": 7}]), "--matching-thresholds", *thresholds]
    assert cli.run(evaluate.main, [str(a) for a in argv]) == 2
    assert error_lines(capsys.readouterr().err) == [
        "error: Matching IoU thresholds must lie strictly between 0 and 1, e.g. "
        f"0.5 0.6 0.7 0.8 0.9; got {shown}."
    ]
    assert not (tmp_path / "eval").exists()


# --- score thresholds that no score can reach ----------------------------------------------------


@pytest.mark.parametrize("threshold", ["2", "-0.1"])
def test_evaluate_refuses_a_score_threshold_outside_0_1(threshold, tmp_path, capsys):
    argv = [*evaluation_files(tmp_path, [{"image_id": 7}]), "--score-threshold", threshold]
    assert cli.run(evaluate.main, [str(a) for a in argv]) == 2
    assert error_lines(capsys.readouterr().err) == [
        f"error: --score-threshold {float(threshold)!r}: prediction scores lie between 0 and 1, "
        "so the threshold must too (e.g. 0.5)."
    ]
    assert not (tmp_path / "eval").exists()


@pytest.mark.parametrize("opts, message", [
    (["TEST.NUCLEI.SCORE_THRESHOLD", "2.0"], "TEST.NUCLEI.SCORE_THRESHOLD 2.0: prediction scores "
     "lie between 0 and 1"),
    (["TEST.NUCLEI.MATCHING_THRESHOLDS", "(0.5, 1.0)"], "Matching IoU thresholds must lie strictly "
     "between 0 and 1"),
])
def test_training_refuses_evaluation_thresholds_before_it_starts(opts, message, tiny_nuclei,
                                                                 tmp_path, capsys):
    assert_one_clear_error(train_net.main, train(tmp_path, *tiny_nuclei["opts"], *opts), message,
                           capsys, untouched=[tmp_path / "out"])


# --- a model the config's choices cannot build ----------------------------------------------------


@pytest.mark.parametrize("model_yaml, message", [
    ("  BACKBONE:\n    NAME: build_resnet_fpn_backbon\n",
     "error: The config's model cannot be built: No object named 'build_resnet_fpn_backbon' found "
     "in 'BACKBONE' registry. Did you mean 'build_resnet_fpn_backbone'? Check the MODEL keys it "
     "sets against detectron2's and Mask R-CNN++'s."),
    ("  FPN:\n    OUT_CHANNELS: 144\n",
     "error: The config's model cannot be built: num_channels (144) must be divisible by "
     "num_groups (32). Check the MODEL keys it sets against detectron2's and Mask R-CNN++'s."),
])
def test_a_model_that_cannot_be_built_is_one_line_in_every_tool(model_yaml, message, tiny_nuclei,
                                                                tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text(f'_BASE_: "{QUICKSTART}"\nMODEL:\n{model_yaml}')
    assert cli.run(train_net.main, [str(a) for a in train(tmp_path, *tiny_nuclei["opts"],
                                                          config=config)]) == 2
    assert error_lines(capsys.readouterr().err) == [message]
    assert cli.run(benchmark.main, ["--config-file", str(config), "--flops-only"]) == 2
    assert error_lines(capsys.readouterr().err) == [message]
    assert not (tmp_path / "out").exists()


# --- config files that are no mapping, and _BASE_s that cannot be followed -----------------------

NOT_A_MAPPING = "a config file is a mapping of config keys (KEY: value lines such as 'SEED: 0')."


@pytest.mark.parametrize("files, message", [
    ({"bad.yaml": ""}, f"Config file {{t}}/bad.yaml is empty; {NOT_A_MAPPING}"),
    ({"bad.yaml": "- SEED\n- 0\n"}, f"Config file {{t}}/bad.yaml holds a list, not a mapping; {NOT_A_MAPPING}"),
    ({"bad.yaml": "SEED 0\n"},
     f"Config file {{t}}/bad.yaml holds the single value 'SEED 0', not a mapping; {NOT_A_MAPPING}"),
    ({"bad.yaml": '_BASE_: "gone.yaml"\n'},
     "Config file {t}/bad.yaml has _BASE_ 'gone.yaml', but {t}/gone.yaml does not exist. A relative "
     "_BASE_ is read from the folder of the file that names it."),
    ({"bad.yaml": '_BASE_: "bad.yaml"\n'},
     "Config file {t}/bad.yaml has _BASE_ 'bad.yaml', which closes a loop of includes ({t}/bad.yaml "
     "-> {t}/bad.yaml): a config cannot build on itself. Remove that _BASE_."),
    ({"bad.yaml": '_BASE_: "other.yaml"\n', "other.yaml": '_BASE_: "bad.yaml"\n'},
     "Config file {t}/other.yaml (the _BASE_ of {t}/bad.yaml) has _BASE_ 'bad.yaml', which closes a "
     "loop of includes ({t}/bad.yaml -> {t}/other.yaml -> {t}/bad.yaml): a config cannot build on "
     "itself. Remove that _BASE_."),
    ({"bad.yaml": '_BASE_: "empty.yaml"\n', "empty.yaml": "# nothing yet\n"},
     f"Config file {{t}}/empty.yaml (the _BASE_ of {{t}}/bad.yaml) is empty; {NOT_A_MAPPING}"),
], ids=["empty", "list", "scalar", "base missing", "includes itself", "loop of two", "empty base"])
def test_a_config_file_that_is_no_mapping_or_whose_base_cannot_be_followed(files, message, tmp_path,
                                                                             capsys):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    assert cli.run(train_net.main, [str(a) for a in train(tmp_path, config=tmp_path / "bad.yaml")]) == 2
    assert error_lines(capsys.readouterr().err) == ["error: " + message.format(t=tmp_path)]
    assert not (tmp_path / "out").exists()


# --- weights that name a folder ------------------------------------------------------------------


def test_weights_that_name_a_folder_say_which_file_in_it_to_pass(tmp_path, capsys):
    run = tmp_path / "run"  # a training run's folder: model_final.pth
    run.mkdir()
    (run / "model_final.pth").write_bytes(b"")
    assert cli.run(train_net.main, [str(a) for a in train(tmp_path, "MODEL.WEIGHTS", run)]) == 2
    assert error_lines(capsys.readouterr().err) == [
        f"error: MODEL.WEIGHTS {run} is a folder, not a weights file; pass the trained model in "
        f"it, {run}/model_final.pth."
    ]
    stopped = tmp_path / "stopped"  # a run stopped early: last_checkpoint names its checkpoint
    stopped.mkdir()
    (stopped / "model_0000099.pth").write_bytes(b"")
    (stopped / "last_checkpoint").write_text("model_0000099.pth")
    image = with_image(tmp_path / "im", "x.png", lambda p: cv2.imwrite(p, np.zeros((8, 8), np.uint8)))
    argv = ["--config-file", QUICKSTART, "--weights", stopped, "--input", image, "--output", tmp_path / "pred"]
    assert cli.run(predict.main, [str(a) for a in argv]) == 2
    assert error_lines(capsys.readouterr().err) == [
        f"error: --weights {stopped} is a folder, not a weights file; pass its last checkpoint, "
        f"{stopped}/model_0000099.pth (as its last_checkpoint says)."
    ]
    argv = ["--config-file", QUICKSTART, "--weights", image, "--output", tmp_path / "export"]
    assert cli.run(load_tool("export_model").main, [str(a) for a in argv]) == 2
    assert error_lines(capsys.readouterr().err) == [
        f"error: --weights {image} is a folder, not a weights file; name the .pth file in it (a "
        "training run's folder holds model_final.pth)."
    ]
    assert not any((tmp_path / name).exists() for name in ("out", "pred", "export"))


# --- compare: seeds and benchmark options, before anything trains --------------------------------


def tiny_comparison(tmp_path, tiny_nuclei, *options):
    """compare.py's command line on the quickstart and the tiny set, with ``options``."""
    seed = TINY_TRAINING.index("SEED")
    return ["--config-file", QUICKSTART, "--output", tmp_path / "cmp", *options,
            *TINY_TRAINING[:seed], *TINY_TRAINING[seed + 2:], *tiny_nuclei["opts"]]


@pytest.mark.parametrize("options, message", [
    (["--seeds", "0", "-1"], "Seed -1: seeds must be 0 or more (detectron2 trains with a random seed "
     "for a negative SEED, which the report could not name); e.g. --seeds 0 1 2."),
    (["--repeats", "0"], "repeats=0 is too small; use at least 1."),
    (["--image-size", "16"], "image_size=16 is too small; use at least 32."),
    (["--image-size", "0"], "image_size=0 is too small; use at least 32."),
])
def test_compare_refuses_negative_seeds_and_bad_benchmark_options_before_training(
        options, message, tiny_nuclei, tmp_path, capsys):
    argv = tiny_comparison(tmp_path, tiny_nuclei, *options)
    assert cli.run(compare.main, [str(a) for a in argv]) == 2
    assert error_lines(capsys.readouterr().err) == [f"error: {message}"]
    assert not (tmp_path / "cmp").exists()


# --- evaluate: a height or width that is no number ------------------------------------------------


@pytest.mark.parametrize("key, value, shown", [("height", "10", '"10"'), ("width", 20.5, "20.5")])
def test_evaluate_refuses_an_image_size_that_is_no_whole_number(key, value, shown, tmp_path, capsys):
    argv = evaluation_files(tmp_path, [{"image_id": 7}])
    gt = json.loads((tmp_path / "gt.json").read_text())
    gt["images"][0][key] = value
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    assert cli.run(evaluate.main, [str(a) for a in argv]) == 2
    assert error_lines(capsys.readouterr().err) == [
        f"error: The ground-truth file {tmp_path}/gt.json: image 7 (a.png) has {key} {shown}; "
        f"'height' and 'width' must be whole numbers of pixels written without quotes, e.g. "
        f'"{key}": 64.'
    ]
    assert not (tmp_path / "eval").exists()


TRAINING_GROUND_TRUTH_CASES = {
    "height written as a string": (lambda coco: coco["images"][0].update(height="64"),
                                   ": image 1 (1.png) has height \"64\"; 'height' and 'width' must be "
                                   "whole numbers of pixels written without quotes"),
    "two images with one id": (lambda coco: coco["images"][1].update(id=1),
                               " uses image id(s) 1 more than once; each image needs its own id"),
    "two annotations with one id": (lambda coco: coco["annotations"][1].update(id=1),
                                    " uses annotation id(s) 1 more than once"),
    "an annotation of an unknown image": (lambda coco: coco["annotations"][1].update(image_id=9),
                                          ": 1 annotation(s) name an unknown image (e.g. annotation 2 has image_id 9)"),
}


@pytest.mark.parametrize("case", TRAINING_GROUND_TRUTH_CASES, ids=str)
def test_training_checks_the_ground_truth_as_the_evaluation_does(case, tmp_path, capsys):
    change, message = TRAINING_GROUND_TRUTH_CASES[case]
    name = "gt_" + "_".join(case.split())  # a dataset name is registered once per process
    opts = coco_set(tmp_path / "d", name, 2)
    annotations = tmp_path / "d" / "annotations.json"
    coco = json.loads(annotations.read_text())
    change(coco)
    annotations.write_text(json.dumps(coco))
    assert_one_clear_error(
        train_net.main, train(tmp_path, *opts),
        f"Dataset '{name}': The ground-truth file {annotations}{message}", capsys, untouched=[tmp_path / "out"])


def test_eval_only_with_a_weights_folder_names_the_file_to_pass(tiny_nuclei, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "model_final.pth").write_bytes(b"")
    argv = ["--eval-only", *train(tmp_path, *tiny_nuclei["opts"], "MODEL.WEIGHTS", run)]
    assert_one_clear_error(
        train_net.main, argv,
        f"MODEL.WEIGHTS {run} is a folder, not a weights file; pass the trained model in it, "
        f"{run / 'model_final.pth'}.", capsys, untouched=[tmp_path / "out"])


# --- outputs of two runs never mix -----------------------------------------------------------------


@pytest.mark.parametrize("left_behind", ["model_final.pth", "metrics.json", "last_checkpoint"])
def test_training_into_an_earlier_run_asks_for_resume_or_overwrite(left_behind, tiny_nuclei,
                                                                   tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / left_behind).write_text("")
    assert cli.run(train_net.main, [str(a) for a in train(tmp_path, *tiny_nuclei["opts"])]) == 2
    assert error_lines(capsys.readouterr().err) == [
        f"error: OUTPUT_DIR {out} holds an earlier training run ({left_behind}): continue it with "
        "--resume, train into another OUTPUT_DIR, or pass --overwrite to replace it."
    ]
    assert sorted(p.name for p in out.iterdir()) == [left_behind]


@pytest.mark.parametrize("left_behind", ["metrics.json", "model_final.pth"])
def test_resuming_a_run_whose_checkpoints_are_gone_asks_for_overwrite(left_behind, tiny_nuclei,
                                                                       tmp_path, capsys):
    """A folder that came without its checkpoints (another machine's run, committed results):
    --resume would start from step 0 and append a second run's iterations to the first's log."""
    out = tmp_path / "out"
    out.mkdir()
    (out / left_behind).write_text("")
    argv = ["--resume", *train(tmp_path, *tiny_nuclei["opts"])]
    assert cli.run(train_net.main, [str(a) for a in argv]) == 2
    assert error_lines(capsys.readouterr().err) == [
        f"error: OUTPUT_DIR {out} holds an earlier training run ({left_behind}) but no "
        "last_checkpoint to resume it from (checkpoints stay on the machine that wrote them): pass "
        "--overwrite instead of --resume to train it again from the start, or train into another "
        "OUTPUT_DIR."
    ]
    assert sorted(p.name for p in out.iterdir()) == [left_behind]


@pytest.mark.parametrize("flag", ["--resume", "--eval-only"])
def test_overwrite_does_not_go_with_resume_or_eval_only(flag, tiny_nuclei, tmp_path, capsys):
    argv = ["--overwrite", flag, *train(tmp_path, *tiny_nuclei["opts"])]
    assert_one_clear_error(train_net.main, argv, "--overwrite replaces an earlier training run by "
                           "a new one; it does not go with --resume or --eval-only.", capsys,
                           untouched=[tmp_path / "out"])


def test_evaluate_refuses_to_replace_an_earlier_evaluation_unless_told(tmp_path, capsys):
    argv = [str(a) for a in evaluation_files(tmp_path, [{"image_id": 7}])]
    assert cli.run(evaluate.main, argv) == 0
    before = (tmp_path / "eval" / "nuclei_metrics.json").read_text()
    capsys.readouterr()
    assert cli.run(evaluate.main, [*argv, "--score-threshold", "0.95"]) == 2
    assert error_lines(capsys.readouterr().err) == [
        f"error: --out {tmp_path / 'eval'} holds an earlier evaluation (nuclei_metrics.json, "
        "nuclei_per_image.csv): choose another folder, or pass --overwrite to replace it."
    ]
    assert (tmp_path / "eval" / "nuclei_metrics.json").read_text() == before
    assert cli.run(evaluate.main, [*argv, "--score-threshold", "0.95", "--overwrite"]) == 0
    assert (tmp_path / "eval" / "nuclei_metrics.json").read_text() != before
