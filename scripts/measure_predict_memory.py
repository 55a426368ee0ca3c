#!/usr/bin/env python3
"""Peak memory and time of tools/predict.py on large grey images, one predict.py process per size.

    python scripts/measure_predict_memory.py                       # 1000², 2000², 4000², 8000²
    python scripts/measure_predict_memory.py --before-commit 798ec97 --before-sizes 1000 2000 4000

Trains a 2-iteration model of configs/quickstart_synthetic.yaml (unless --weights names one; one
trained earlier in --work is reused), makes grey images of synthetic nuclei of each size, runs
tools/predict.py on each in its own process at test size 128 with every prediction painted
(``--opts``), and records the process's peak resident set size and its seconds per megapixel.
``--before-commit`` also measures the predict.py of an older commit (its tree unpacked into
--work by ``git archive``) and this one side by side at --before-sizes with --before-opts
(default: predict.py's own score threshold, under which that model paints nothing). A run is
killed past --timeout seconds or --memory-limit-gib. Writes OUT.md and OUT.json (default
docs/results/predict_memory), naming the machine and how busy its other processes kept it.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys

import cv2

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "quickstart_synthetic.yaml")
TEST_SIZE = ["INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "128"]
# The 2-iteration model's scores lie between 0.27 and 0.42: paint every prediction, so the
# label maps and overlays hold them all (past 65,535 of them the label map is a 32-bit TIFF).
DEFAULT_OPTS = [*TEST_SIZE, "TEST.NUCLEI.SCORE_THRESHOLD", "0.0"]
# Painting every prediction, the older predict.py kept a full-image mask per nucleus in the
# Visualizer (20 GB at 2000²): the before/after comparison keeps the default threshold (0.5).
BEFORE_OPTS = TEST_SIZE


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 2000, 4000, 8000])
    parser.add_argument("--weights", help="a model of --config-file (default: train 2 iterations)")
    parser.add_argument("--config-file", default=CONFIG)
    parser.add_argument("--work", default=os.path.join(REPO, "output", "predict_memory"))
    parser.add_argument("--out", default=os.path.join(REPO, "docs", "results", "predict_memory"),
                        help="OUT.md and OUT.json are written")
    parser.add_argument("--timeout", type=float, default=7200, help="seconds per run")
    parser.add_argument("--memory-limit-gib", type=float, default=8.0,
                        help="a run using more is killed (default: %(default)s)")
    parser.add_argument("--opts", nargs="*", default=DEFAULT_OPTS,
                        help="predict.py's KEY VALUE overrides (default: %(default)s)")
    parser.add_argument("--before-commit", help="also measure predict.py as of this commit")
    parser.add_argument("--before-sizes", type=int, nargs="+", default=[1000, 2000, 4000])
    parser.add_argument("--before-opts", nargs="*", default=BEFORE_OPTS)
    return parser.parse_args(argv)


def child_env(tree=REPO):
    """The environment of a child process running the package of checkout ``tree`` (whatever
    checkout pip installed in editable mode)."""
    env = dict(os.environ)
    env.setdefault("DETECTRON2_DATASETS", os.path.join(REPO, "datasets"))
    env["PYTHONPATH"] = os.pathsep.join([tree, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def tiny_model(args):
    """--weights, or a 2-iteration model of the config trained in --work (reused if there)."""
    if args.weights:
        return args.weights
    folder = os.path.join(args.work, "model")
    weights = os.path.join(folder, "model_final.pth")
    if not os.path.exists(weights):
        print(f"training a 2-iteration model into {folder} ...", flush=True)
        subprocess.run([sys.executable, os.path.join(REPO, "tools", "train_net.py"),
                        "--config-file", args.config_file, *TEST_SIZE, "SOLVER.MAX_ITER", "2",
                        "SOLVER.CHECKPOINT_PERIOD", "100", "DATALOADER.NUM_WORKERS", "0",
                        "SEED", "0", "OUTPUT_DIR", folder], check=True, env=child_env())
    return weights


def before_tree(args):
    """The tree of --before-commit, unpacked by git archive into --work."""
    tree = os.path.join(args.work, f"before-{args.before_commit}")
    if not os.path.isdir(tree):
        os.makedirs(tree)
        archive = subprocess.run(["git", "-C", REPO, "archive", args.before_commit],
                                 check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", tree], input=archive, check=True)
    return tree


def measure(args, weights, images, series):
    """One predict.py process per size, on the checkout ``series["tree"]`` with its options:
    the table's rows."""
    from maskrcnnpp.config_loader import build_cfg
    from maskrcnnpp.inference import TiledPredictor
    from maskrcnnpp.inference.predict_memory import counts_printed, predict_args, run_python_measured

    tiler = TiledPredictor(build_cfg(args.config_file, series["opts"]), model=None)
    rows = []
    for size in series["sizes"]:
        output = os.path.join(args.work, f"{series['name']}-{size}")
        shutil.rmtree(output, ignore_errors=True)  # predict.py refuses an earlier output
        print(f"{series['title']}: predicting {size}x{size} ...", flush=True)
        run = run_python_measured(
            os.path.join(series["tree"], "tools", "predict.py"),
            predict_args(args.config_file, weights, images[size], output, series["opts"]),
            env=child_env(series["tree"]), timeout=args.timeout, cwd=series["tree"],
            memory_limit_mib=args.memory_limit_gib * 1024)
        if run.returncode not in (0, None):
            raise SystemExit(f"predict.py failed on {size}x{size}:\n{run.stdout[-3000:]}")
        predictions, nuclei = counts_printed(run.stdout)
        label_files = sorted(name for name in os.listdir(output) if "_labels." in name) \
            if os.path.isdir(output) and not run.killed else []
        rows.append({"size": size, "tiles": len(tiler.tiles(size, size)),
                     "seconds": run.seconds, "peak_rss_mib": run.peak_rss_mib,
                     "cpu_seconds": run.cpu_seconds, "others_cores": run.others_cores,
                     "killed": run.killed, "predictions": predictions, "nuclei": nuclei,
                     "label_file": (None if not label_files else "16-bit PNG"
                                    if label_files[0].endswith(".png") else "32-bit TIFF")})
        print(f"  peak {run.peak_rss_mib / 1024:.2f} GiB, {run.seconds:.0f} s"
              f"{f' (killed: {run.killed})' if run.killed else ''}", flush=True)
    return rows


def report_markdown(report):
    from maskrcnnpp.inference.predict_memory import format_table

    busy = max(row["others_cores"] for series in report["series"] for row in series["rows"])
    lines = [
        "# tools/predict.py: peak memory and time by image size", "",
        f"Measured by `python scripts/measure_predict_memory.py {' '.join(report['argv'])}` on "
        f"{report['machine']}, torch {report['torch']}, on the CPU.", "",
        f"Model: a 2-iteration model of `{report['config']}`: its scores lie between 0.27 and "
        "0.42 and every 640 px tile holds about 460 detections, a heavy load. Images: grey, "
        "synthetic fluorescent nuclei (a 500 px scene repeated). Each size runs tools/predict.py "
        "in its own process; peak RSS is that process's VmHWM, time its wall time from start to "
        "exit (loading the model, reading, overlap-tile inference, COCO results, label map, "
        "overlay). A run is killed past "
        f"{report['timeout']:.0f} s or {report['memory_limit_gib']:g} GiB.", "",
    ]
    for series in report["series"]:
        lines += [f"## {series['title']}", "", f"Options: `{' '.join(series['opts'])}`.", "",
                  format_table(series["rows"]), ""]
    lines += [
        "The last column is how many cores the machine's other processes kept busy on average "
        f"during each run (it has {report['cpu_count']})"
        + (f": up to {busy:.1f} here, as other processes shared the CPU; absolute times are "
           "slow and noisy, so compare s/Mpx within one table" if busy >= 0.5 else "")
        + ". Small images spend relatively more on mirror-padded border tiles: tiles per "
        "megapixel fall from 9 at 1000² to 4.5 at 8000².", "",
    ]
    return "\n".join(lines)


def main(argv):
    args = parse_args(argv)
    import torch

    from maskrcnnpp.inference.predict_memory import grey_nuclei_image, machine

    os.makedirs(os.path.join(args.work, "images"), exist_ok=True)
    weights = tiny_model(args)
    series = [{"name": "after", "title": "This version", "tree": REPO, "sizes": args.sizes,
               "opts": args.opts}]
    if args.before_commit:
        series += [
            {"name": "before", "title": f"Before (commit {args.before_commit})",
             "tree": before_tree(args), "sizes": args.before_sizes, "opts": args.before_opts},
            {"name": "after-same", "title": "This version, with the options of the one before",
             "tree": REPO, "sizes": args.before_sizes, "opts": args.before_opts},
        ]
    images = {}
    for size in sorted({size for one in series for size in one["sizes"]}):
        images[size] = os.path.join(args.work, "images", f"grey_{size}.png")
        if not os.path.exists(images[size]):
            cv2.imwrite(images[size], grey_nuclei_image(size))
    for one in series:
        one["rows"] = measure(args, weights, images, one)
    report = {"argv": argv, "machine": machine(), "torch": torch.__version__,
              "cpu_count": os.cpu_count(), "config": os.path.relpath(args.config_file, REPO),
              "timeout": args.timeout, "memory_limit_gib": args.memory_limit_gib,
              "series": [{key: one[key] for key in ("title", "opts", "sizes", "rows")}
                         for one in series]}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out + ".json", "w") as f:
        json.dump(report, f, indent=1)
    with open(args.out + ".md", "w") as f:
        f.write(report_markdown(report))
    print(f"wrote {args.out}.md and .json")


if __name__ == "__main__":
    main(sys.argv[1:])
