#!/usr/bin/env python3
"""Export a trained model for deployment, check it against PyTorch and time both.

    python tools/export_model.py --config-file configs/maskrcnnpp_R50.yaml \\
        --weights output/maskrcnnpp_R50/model_final.pth --method onnx --output export/

--method scripting or tracing writes OUTPUT/model.ts (TorchScript), --method onnx writes
OUTPUT/model.onnx (traced, opset --opset, any image size) and runs it with
onnxruntime; all through detectron2.export. The exported model takes one tile as predict.py feeds
the model (a (C, H, W) float tensor in INPUT.FORMAT, resized as at test time) and returns boxes,
scores, classes and the mask head's 28x28 probabilities in that tile's frame; overlap-tile
inference, resizing back and mask pasting stay outside it.

Each sample image (--images, or the first --num-images of DATASETS.TEST[0]) goes through PyTorch
and the exported model --repeats times, interleaved: the outputs must agree within the stated
tolerance (same detections and classes, boxes within 0.01 px, scores within 1e-4, mask
probabilities within 1e-3) and the median latencies are reported. OUTPUT/export_report.json holds
all of it. Exit code 0 when every image agrees, 1 when one does not, 2 for a usage error (an op the
method cannot export, an ONNX opset too old, missing onnxruntime...). Trailing KEY VALUE pairs
override the config.
"""

import os

import maskrcnnpp  # noqa: F401  (first: it quiets the dependencies' import-time warnings)
import numpy as np
import torch
from detectron2.data import DatasetCatalog
from tqdm import tqdm

from maskrcnnpp import cli
from maskrcnnpp.config_loader import build_cfg
from maskrcnnpp.data.images import read_rgb8
from maskrcnnpp.errors import UserInputError
from maskrcnnpp.export import DEFAULT_ONNX_OPSET, EXPORT_METHODS, Tolerance, check_and_time
from maskrcnnpp.export import check_opset, export, within
from maskrcnnpp.inference import TiledPredictor
from maskrcnnpp.io_utils import write_json
from maskrcnnpp.preflight import check_model, check_writable
from maskrcnnpp.machine import describe

REPORT_FILE = "export_report.json"


def parse_args(argv):
    parser = cli.trained_model_parser(__doc__)
    parser.add_argument("--method", choices=sorted(EXPORT_METHODS), default="scripting")
    parser.add_argument("--output", required=True, metavar="DIR")
    parser.add_argument("--opset", type=int, default=DEFAULT_ONNX_OPSET,
                        help="ONNX opset for --method onnx (default: %(default)s)")
    parser.add_argument("--images", nargs="+", metavar="FILE",
                        help="sample images (default: the first --num-images of DATASETS.TEST[0])")
    parser.add_argument("--num-images", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per image and model")
    return cli.parse_with_overrides(parser, argv)


def sample_paths(cfg, args):
    """The sample images' files: --images, or the first --num-images of the test set."""
    if args.num_images < 1 or args.repeats < 1:
        raise UserInputError("--num-images and --repeats must be at least 1.")
    if args.images:
        missing = [path for path in args.images if not os.path.isfile(path)]
        if missing:
            raise UserInputError(f"--images {missing[0]} is not a file.")
        return args.images
    if not cfg.DATASETS.TEST:
        raise UserInputError("DATASETS.TEST is empty: pass sample images with --images.")
    return [d["file_name"] for d in DatasetCatalog.get(cfg.DATASETS.TEST[0])[:args.num_images]]


def model_inputs(cfg, model, paths):
    """Each image as its first (usually only) tile enters the model in tools/predict.py."""
    predictor = TiledPredictor(cfg, model=model)
    inputs = []
    for path in paths:
        image = read_rgb8(path)
        image = np.ascontiguousarray(image if cfg.INPUT.FORMAT == "RGB" else image[:, :, ::-1])
        tile = predictor.tiles(*image.shape[:2])[0]
        inputs.append(predictor.model_input(image, tile)["image"])
    return inputs


def main(argv):
    args = parse_args(argv)
    cli.check_weights_file(args.weights)
    if args.method == "onnx":
        check_opset(args.opset)
    cfg = build_cfg(args.config_file, [*args.opts, "MODEL.WEIGHTS", args.weights,
                                       "MODEL.DEVICE", "cpu"])
    paths = sample_paths(cfg, args)
    check_writable(args.output, "--output")
    model = check_model(cfg).eval()  # builds on the CPU and loads the weights, or says why not
    os.makedirs(args.output, exist_ok=True)
    images = model_inputs(cfg, model, paths)
    print(f"Exporting by {args.method} (sample {tuple(images[0].shape)}) ...", flush=True)
    exported = export(model, args.method, images[0], args.output, args.opset)
    checks = check_and_time(model, exported, images, args.repeats,
                            progress=lambda items: tqdm(items, desc="checking", unit="image"))
    tolerance = Tolerance()
    agree = [within(difference, tolerance) for difference in checks["differences"]]
    report = {
        "config": args.config_file, "weights": args.weights, "method": args.method,
        "file": exported.path, "opset": args.opset if args.method == "onnx" else None,
        "machine": describe(torch), "tolerance": tolerance.__dict__, "repeats": args.repeats,
        "images": [{"file": path, "input_shape": list(image.shape), "agrees": ok, **difference}
                   for path, image, ok, difference in zip(paths, images, agree,
                                                          checks["differences"])],
        "eager_ms": 1000 * checks["eager_seconds"],
        "exported_ms": 1000 * checks["exported_seconds"],
    }
    write_json(report, os.path.join(args.output, REPORT_FILE), indent=2)
    for entry in report["images"]:
        verdict = "agrees" if entry["agrees"] else "DIFFERS"
        print(f"  {os.path.basename(entry['file'])} {tuple(entry['input_shape'])}: {verdict} "
              f"{ {k: entry[k] for k in ('count', 'detections', 'box_pixels', 'score', 'mask_probability') if k in entry} }")
    print(f"Latency per image, median of {args.repeats}: PyTorch {report['eager_ms']:.0f} ms, "
          f"{args.method} {report['exported_ms']:.0f} ms "
          f"({report['exported_ms'] / report['eager_ms']:.2f}x). Wrote {exported.path} and "
          f"{os.path.join(args.output, REPORT_FILE)}.")
    return 0 if all(agree) else 1


if __name__ == "__main__":
    raise SystemExit(cli.run(main))
