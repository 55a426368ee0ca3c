"""Bookkeeping of training runs that a comparison shares: one run per config and seed, in its own
folder, checked before anything is trained, reused when finished, and read back afterwards.

A comparison folder ``DIR`` holds ``DIR/runs/<config stem>/seed<s>/``, the OUTPUT_DIR of one
tools/train_net.py run: checkpoints, metrics.json, config.yaml, train.log and run_result.json,
written once it trained and was evaluated. A run folder is reused only if it was made with the
same resolved config (configs and overrides), checked against its config.yaml.
"""
import json
import os
from dataclasses import dataclass

import numpy as np
import yaml
from detectron2.config import get_cfg

from ..config import add_maskrcnnpp_config
from ..config_loader import build_cfg
from ..errors import UserInputError
from ..evaluation import METRICS_FILE
from ..preflight import check_datasets, check_model, check_writable

# Configs must agree on these: "same data and schedule".
SHARED_KEYS = ("DATASETS.TRAIN", "DATASETS.TEST", "SOLVER.MAX_ITER", "SOLVER.IMS_PER_BATCH")
# Where a run happened, not what it computed: ignored when deciding whether a run can be reused.
PLACE_KEYS = ("OUTPUT_DIR", "MODEL.DEVICE")
RESULT_FILE = "run_result.json"
LOG_FILE = "train.log"
# Starts the line of LOG_FILE that names each tools/train_net.py call training the run.
COMMAND_PREFIX = "$ "


class RunFailed(RuntimeError):
    """A training run exited with an error; the message names its log."""


def _flatten(node, prefix=""):
    """{"SOLVER.MAX_ITER": 1000, ...} of a nested dict (a loaded config)."""
    flat = {}
    for key, value in node.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def _resolved(cfg):
    """A config as plain data, in the form detectron2 writes config.yaml (tuples as lists)."""
    return _flatten(yaml.safe_load(cfg.dump()))


def _lookup(cfg, key):
    for part in key.split("."):
        cfg = cfg[part]
    return cfg


@dataclass
class Run:
    """One training run: a config (by its file's stem) and a seed, in its own folder."""

    name: str
    config_file: str
    seed: int
    output_dir: str
    opts: list  # the comparison's overrides; SEED and OUTPUT_DIR are added per run
    cfg: object  # the resolved CfgNode, as the child process builds it

    def path(self, file_name):
        return os.path.join(self.output_dir, file_name)

    @property
    def finished(self):
        return os.path.isfile(self.path(RESULT_FILE))

    @property
    def training_calls(self):
        """How many tools/train_net.py calls trained the run, by the command lines of its
        LOG_FILE (0 where the log was not kept): more than 1 where it was resumed after a stop or
        a failure."""
        if not os.path.isfile(self.path(LOG_FILE)):
            return 0
        with open(self.path(LOG_FILE)) as f:
            return sum(line.startswith(COMMAND_PREFIX) for line in f)

    def describe(self, position, total):
        return f"run {position}/{total}: {self.name} seed {self.seed}"


def plan_runs(config_files, seeds, opts, output_dir):
    """Every (config, seed) run, checked before anything is trained.

    Raises UserInputError for configs that cannot be compared (same stem, different data or
    schedule), overrides that the comparison sets itself, and run folders made with other settings.
    """
    if len(config_files) < 1:
        raise UserInputError("A comparison needs at least one config file.")
    if not seeds or len(set(seeds)) < len(seeds):
        raise UserInputError(f"Seeds {list(seeds)}: give one or more different seeds.")
    if min(seeds) < 0:
        raise UserInputError(
            f"Seed {min(seeds)}: seeds must be 0 or more (detectron2 trains with a random seed "
            "for a negative SEED, which the report could not name); e.g. --seeds 0 1 2."
        )
    for key in ("SEED", "OUTPUT_DIR"):
        if key in opts[::2]:
            raise UserInputError(
                f"The comparison sets {key} for each run; drop it from the overrides "
                "(seeds and the output folder are given to the comparison itself)."
            )
    names = [os.path.splitext(os.path.basename(path))[0] for path in config_files]
    if len(set(names)) < len(names):
        raise UserInputError(
            f"Config files {list(config_files)} share a file name; runs are named after it, so "
            "rename or copy one of them."
        )
    runs = []
    for name, config_file in zip(names, config_files):
        for seed in seeds:
            output = os.path.join(os.path.abspath(output_dir), "runs", name, f"seed{seed}")
            cfg = build_cfg(config_file, [*opts, "SEED", str(seed), "OUTPUT_DIR", output])
            runs.append(Run(name, config_file, seed, output, list(opts), cfg))
    _check_same_data_and_schedule(runs)
    check_writable(output_dir, "The comparison folder")
    for run in runs:
        if run.seed == runs[0].seed:
            check_model(run.cfg)  # each config builds (and its weights, if any, fit it)
    train = runs[0].cfg.DATASETS.TRAIN
    check_datasets(runs[0].cfg, [*train, *runs[0].cfg.DATASETS.TEST], train_names=train)
    for run in runs:
        _check_reusable(run)
    return runs


def _check_same_data_and_schedule(runs):
    first = runs[0]
    for run in runs[1:]:
        for key in SHARED_KEYS:
            if _lookup(run.cfg, key) != _lookup(first.cfg, key):
                raise UserInputError(
                    f"{run.config_file} has {key} {_lookup(run.cfg, key)} but {first.config_file} "
                    f"has {_lookup(first.cfg, key)}: configs are compared on the same data and "
                    f"schedule. Set it for all of them with the override {key} VALUE."
                )


def _default_config():
    """Every key's default, flattened: a key added since a run was made, at its default, changed
    nothing that run computed."""
    cfg = get_cfg()
    add_maskrcnnpp_config(cfg)
    return _resolved(cfg)


def _check_reusable(run):
    """Raise unless the run folder is new or was made with the same resolved config."""
    saved = run.path("config.yaml")
    if not os.path.isfile(saved):
        return
    with open(saved) as f:
        before = _flatten(yaml.safe_load(f))
    now = _resolved(run.cfg)
    defaults = _default_config()
    changed = sorted(
        key for key in before.keys() | now.keys()
        if key not in PLACE_KEYS and before.get(key, defaults.get(key)) != now.get(key)
    )
    if changed:
        shown = "; ".join(f"{key} was {before.get(key)!r}, now {now.get(key)!r}"
                          for key in changed[:5])
        raise UserInputError(
            f"{run.output_dir} was trained with other settings ({shown}). Use another --output, "
            "or the configs and overrides of the earlier comparison to reuse its runs."
        )


def read_metrics_log(path):
    """detectron2's metrics.json as {iteration: entry}, the entries of one iteration merged. A
    resumed call appends from its checkpoint on, back in the iterations: what the stopped call had
    logged from there on was trained again, so it is dropped (else a resumed run's progress would
    read as the stopped call's furthest iteration)."""
    by_iteration, last = {}, -1
    if not os.path.isfile(path):
        return by_iteration
    with open(path) as f:
        for line in f:
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:  # the line being written right now
                continue
            iteration = entry["iteration"]
            if iteration < last:
                by_iteration = {i: e for i, e in by_iteration.items() if i < iteration}
            last = iteration
            by_iteration.setdefault(iteration, {}).update(entry)
    return by_iteration


def evaluation_key(test_datasets, metric):
    """The metrics.json key of a NucleiEvaluator metric of the first of a run's ``test_datasets``
    (its DATASETS.TEST).

    DefaultTrainer.test drops the dataset level of the results when there is one test dataset.
    """
    prefix = "" if len(test_datasets) == 1 else f"{test_datasets[0]}/"
    return f"{prefix}nuclei/{metric}"


def collect_run(run, curve_metric="mask_AP"):
    """What a comparison needs of a trained run: its final nuclei metrics (nuclei_metrics.json),
    median training step time, and the training-loss and validation ``curve_metric`` curves: all
    read from its folder, so that collecting again gives the same."""
    metrics_file = os.path.join(run.output_dir, "inference", run.cfg.DATASETS.TEST[0], METRICS_FILE)
    if not os.path.isfile(metrics_file):
        raise RunFailed(
            f"{run.output_dir} finished training but has no {metrics_file}: the Trainer's "
            "evaluation must include NucleiEvaluator."
        )
    with open(metrics_file) as f:
        final = json.load(f)
    log = read_metrics_log(run.path("metrics.json"))
    step_times = [entry["time"] for entry in log.values() if "time" in entry]
    curve_key = evaluation_key(run.cfg.DATASETS.TEST, curve_metric)
    return {
        "config": run.name,
        "seed": run.seed,
        "metrics": {key: value for key, value in final.items() if key != "by_type"},
        "metrics_by_type": final.get("by_type", {}),
        "train_s_per_iter": float(np.median(step_times)) if step_times else None,
        "loss_curve": [[i, e["total_loss"]] for i, e in log.items() if "total_loss" in e],
        "eval_curve": [[i, e[curve_key]] for i, e in log.items() if curve_key in e],
    }
