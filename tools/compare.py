#!/usr/bin/env python3
"""Train and evaluate configs on the same data, schedule and seeds; compare accuracy and cost.

    python tools/compare.py --config-file configs/maskrcnn_R50_FPN.yaml configs/maskrcnnpp_R50.yaml \\
        --output output/compare --seeds 0 1 2 SOLVER.MAX_ITER 5000

Trailing KEY VALUE pairs apply to every run. Each config and seed trains in its own
tools/train_net.py process into DIR/runs/<config>/seed<s> (see maskrcnnpp/analysis/runs.py), one
after the other, seed by seed (every config's first seed, then the next), or --jobs N at once on
one device (they share its memory and the CPU cores of their data loaders); a failed run is
reported and the others go on. A killed comparison loses at most the runs in progress: calling
the command again reuses finished runs and resumes the others from their last checkpoint (one
whose checkpoints are gone, on another machine, trains again from step 0), and
the seeds it finished already make a report with fewer --seeds. Then the trained models are
benchmarked interleaved, and DIR/compare.md, .csv, .json and .png are written: mean +-
std over seeds, costs, paired t-tests against the first config, accuracy against speed, curves.
A model that predicts boxes only (RetinaNet, MODEL.MASK_ON False) has box AP and no mask metrics:
they show as n/a, and box AP is then the accuracy plotted.
"""

import argparse
import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
import threading
import time

import torch
from tqdm import tqdm

from maskrcnnpp import cli
from maskrcnnpp.analysis.comparison import SPEED_KEYS, figure_metric, summarize, unmeasured
from maskrcnnpp.analysis.comparison_report import write_comparison
from maskrcnnpp.analysis.runs import (
    COMMAND_PREFIX,
    LOG_FILE,
    RESULT_FILE,
    RunFailed,
    collect_run,
    plan_runs,
    read_metrics_log,
)
from maskrcnnpp.analysis.speed import BenchmarkSettings, benchmark
from maskrcnnpp.errors import UserInputError
from maskrcnnpp.io_utils import write_json
from maskrcnnpp.machine import describe as describe_machine
from maskrcnnpp.machine import label as machine_label
from maskrcnnpp.preflight import unresumable_run_files
from maskrcnnpp.training import clear_training_run, concurrent_run_env

TRAIN_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "train_net.py")
POLL_SECONDS = 2.0
# Side of the benchmark's image for configs tested at native size (INPUT.MIN_SIZE_TEST 0): a
# mid-sized DSB2018 image.
NATIVE_BENCHMARK_SIZE = 512
FINAL_WEIGHTS = "model_final.pth"
# How long a stopped training may take to end before it is killed.
STOP_SECONDS = 10
PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def _dies_with_this_process():
    """A ``preexec_fn`` that has the child sent SIGTERM when this process ends, however it ends
    (SIGKILL included): Linux's prctl(PR_SET_PDEATHSIG). None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()

    def preexec():
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # this process ended before the child asked
            os._exit(1)

    return preexec


@contextlib.contextmanager
def _stop_signals_as_exit():
    """Within it, SIGTERM (and SIGHUP) end this process by SystemExit(128 + signal), as Ctrl-C
    does by KeyboardInterrupt, so that the code that stops the child training runs first."""
    if threading.current_thread() is not threading.main_thread():  # only it may set handlers
        yield
        return

    def exit_(signum, frame):
        raise SystemExit(128 + signum)

    stops = [signal.SIGTERM, *([signal.SIGHUP] if hasattr(signal, "SIGHUP") else [])]
    before = {signum: signal.signal(signum, exit_) for signum in stops}
    try:
        yield
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)


def _stop(child):
    """End the child training and every process it started (its process group): SIGTERM, then
    SIGKILL for what is left of the group after the child ended or STOP_SECONDS passed."""
    for signum in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):  # the group has ended
            os.killpg(child.pid, signum)
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=STOP_SECONDS)


class TrainingChild:
    """One run's tools/train_net.py process, with its log file and progress bar."""

    def __init__(self, run, position, total, num_gpus, jobs, bar):
        self.run, self.label, self.bar = run, run.describe(position, total), bar
        command = [
            sys.executable, TRAIN_SCRIPT, "--config-file", run.config_file, "--resume",
            "--num-gpus", str(num_gpus), *run.opts, "SEED", str(run.seed), "OUTPUT_DIR",
            run.output_dir,
        ]
        os.makedirs(run.output_dir, exist_ok=True)
        self.max_iter = run.cfg.SOLVER.MAX_ITER
        self.log = open(run.path(LOG_FILE), "a")
        self.log.write(f"{COMMAND_PREFIX}{' '.join(command)}\n")
        self.log.flush()
        self.progress = tqdm(total=self.max_iter, desc=self.label, unit="iter", position=bar)
        self.started = time.perf_counter()
        # its own process group, so that stopping it reaches its data-loader workers too; the
        # concurrent runs share the CPU cores (training.concurrent_run_env)
        self.child = subprocess.Popen(
            command, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=_dies_with_this_process(), env=concurrent_run_env(jobs),
        )

    def poll(self):
        """Show the run's iteration; its exit code once it has ended, else None."""
        # the final evaluation is logged one iteration past the last
        done = min(max(read_metrics_log(self.run.path("metrics.json")), default=-1) + 1,
                   self.max_iter)
        self.progress.update(done - self.progress.n)
        if done >= self.max_iter:
            self.progress.set_postfix_str("evaluating")
        return self.child.poll()

    def close(self):
        self.progress.close()
        self.log.close()

    def stop(self):
        _stop(self.child)
        self.close()
        tqdm.write(f"{self.label} stopped; the same command resumes it from its last checkpoint.")

    def result(self, curve_metric):
        """The run's collected result once it ended well (RESULT_FILE written); RunFailed else."""
        wall_seconds = time.perf_counter() - self.started  # training and final evaluation
        self.close()
        if self.child.returncode != 0:
            with open(self.run.path(LOG_FILE)) as f:
                tail = "".join(f.readlines()[-15:])
            raise RunFailed(
                f"{self.label} failed (exit code {self.child.returncode}); its output is in "
                f"{self.run.path(LOG_FILE)}. Last lines:\n{tail}"
            )
        # where it happened, which collecting again later (on another machine) cannot tell: the
        # wall time, and the machine (a run resumes only from checkpoints, which stay where written)
        device = self.run.cfg.MODEL.DEVICE.split(":")[0]
        result = whole_run_timing(
            {**collect_run(self.run, curve_metric), "wall_seconds": wall_seconds,
             "machine": machine_label(describe_machine(torch, device))}, self.run)
        write_json(result, self.run.path(RESULT_FILE), indent=2)
        return result


def whole_run_timing(result, run):
    """``result`` with its wall time only where one call trained the whole run: a run resumed
    after a stop or a failure was timed over its last call alone, a part of its training."""
    return {**result, "wall_seconds": result.get("wall_seconds") if run.training_calls <= 1 else None}


def train_runs(pending, total, num_gpus, jobs, curve_metric):
    """Train ``pending`` ((position, run) pairs), up to ``jobs`` at once, writing each run's
    result as it ends; a failed run is reported and the others go on. Returns {run output
    folder: result} and the failures (RunFailed)."""
    results, failures, live = {}, [], []
    pending = list(pending)
    with _stop_signals_as_exit():
        try:
            while pending or live:
                while pending and len(live) < jobs:
                    position, run = pending.pop(0)
                    bar = min(set(range(jobs)) - {child.bar for child in live})
                    live.append(TrainingChild(run, position, total, num_gpus, jobs, bar))
                time.sleep(POLL_SECONDS)
                for child in [child for child in live if child.poll() is not None]:
                    live.remove(child)
                    try:
                        results[child.run.output_dir] = child.result(curve_metric)
                    except RunFailed as e:
                        failures.append(e)
                        tqdm.write(f"error: {e}")
        except BaseException:  # SIGTERM, Ctrl-C, or an error here: the trainings stop as well
            for child in live:
                child.stop()
            raise
    return results, failures


def run_all(runs, num_gpus, jobs=1):
    """Each run's collected result, training the runs that have none, up to ``jobs`` at once;
    RunFailed, once the others have ended, if any failed."""
    curve_metric = figure_metric(runs)
    reused = {}
    for position, run in enumerate(runs, start=1):
        if run.finished:
            tqdm.write(f"{run.describe(position, len(runs))} - finished earlier, reused")
            with open(run.path(RESULT_FILE)) as f:
                stored = json.load(f)
            # Collected again from the run's folder where it still holds the evaluator's files,
            # so that a run made by an earlier version reports what this one does (per-type
            # metrics); its measured wall time is kept where one call trained it all.
            try:
                collected = {**stored, **collect_run(run, curve_metric)}
            except RunFailed:
                collected = stored
            reused[run.output_dir] = whole_run_timing(collected, run)
            write_json(reused[run.output_dir], run.path(RESULT_FILE), indent=2)
    # Seed by seed (every config's first seed, then the next): a comparison stopped part-way
    # leaves whole seeds, which a report over fewer --seeds already pairs.
    seeds = list(dict.fromkeys(run.seed for run in runs))
    pending = sorted(((position, run) for position, run in enumerate(runs, start=1)
                      if run.output_dir not in reused),
                     key=lambda pair: (seeds.index(pair[1].seed), pair[0]))
    for position, run in pending:
        restart_if_unresumable(run, run.describe(position, len(runs)))
    trained, failures = train_runs(pending, len(runs), num_gpus, jobs, curve_metric)
    if failures:
        raise RunFailed(f"{len(failures)} of {len(pending)} runs failed; the others are kept, and "
                        f"the same command trains only what is missing. {failures[0]}")
    return [{**reused, **trained}[run.output_dir] for run in runs]


def restart_if_unresumable(run, label):
    """Clear an unfinished run's folder that holds its earlier training but no checkpoint (those
    stay on the machine that wrote them): the run trains again from step 0, and its metrics.json
    and train.log are then its own, not appended to those of a training that cannot go on."""
    found = unresumable_run_files(run.output_dir)
    if not found:
        return
    clear_training_run(run.output_dir)
    if os.path.isfile(run.path(LOG_FILE)):
        os.remove(run.path(LOG_FILE))
    tqdm.write(f"{label} - its earlier training left {', '.join(found)} but no checkpoint here: "
               "trained again from step 0")


def _trained_cfg(run):
    """The run's config with its final weights, as a user would deploy it."""
    cfg = run.cfg.clone()
    cfg.defrost()
    cfg.MODEL.WEIGHTS = run.path(FINAL_WEIGHTS)
    return cfg


def _benchmarked_runs(runs):
    """Per config, the run whose trained model the benchmark measures: its first seed that has
    (or, being trained now, will have) final weights; None for a config whose runs are all
    finished without them (committed results whose checkpoints are gone)."""
    chosen = {}
    for run in runs:
        if not run.finished or os.path.isfile(run.path(FINAL_WEIGHTS)):
            chosen.setdefault(run.name, run)
    return {name: chosen.get(name) for name in dict.fromkeys(run.name for run in runs)}


def _earlier_benchmark(output_dir, names):
    """The benchmark of the comparison folder's earlier report, if it measured every config of
    ``names``, in the form :func:`benchmark` returns; else None."""
    path = os.path.join(output_dir, "compare.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        earlier = json.load(f)
    rows = {row["config"]: row for row in earlier["results"]}
    if not set(names) <= set(rows):
        return None
    return {**{key: earlier["benchmark"][key] for key in ("settings", "machine", "memory_method")},
            "reused_from": "the earlier compare.json of this folder",
            "results": [{"config": name, **{key: rows[name][key] for key in SPEED_KEYS}}
                        for name in names]}


def check_earlier_report(runs, output_dir, overwrite):
    """Refuse, unless ``overwrite``, to replace the folder's earlier compare.json by a report
    lacking some of its configs or seeds: a comparison grows (seeds or configs added) but never
    silently loses what it held."""
    path = os.path.join(output_dir, "compare.json")
    if overwrite or not os.path.isfile(path):
        return
    with open(path) as f:
        earlier = json.load(f)
    configs = [config["name"] for config in earlier["configs"]]
    dropped = ([name for name in configs if name not in {run.name for run in runs}]
               + [f"seed {seed}" for seed in earlier["seeds"] if seed not in {run.seed for run in runs}])
    if dropped:
        raise UserInputError(
            f"{path} compares {', '.join(configs)} over seeds {earlier['seeds']}; this comparison "
            f"lacks {', '.join(dropped)} and would replace it. Name every earlier config and seed "
            "again (adding others is fine), choose another --output, or pass --overwrite."
        )


def plan_benchmark(runs, output_dir):
    """Where the speed comparison will come from, decided before anything trains: a measurement
    of every config's trained model, or, where some config keeps no trained model, the earlier
    report's benchmark of the same configs (its measurements stay comparable to each other), or,
    with neither, no speed comparison: the accuracy of committed results needs no model."""
    chosen = _benchmarked_runs(runs)
    gone = [name for name, run in chosen.items() if run is None]
    if not gone:
        return chosen, None
    earlier = _earlier_benchmark(output_dir, list(chosen))
    if earlier is None:
        earlier = unmeasured(
            list(chosen),
            f"the runs of {', '.join(gone)} keep no {FINAL_WEIGHTS} (results committed without "
            f"checkpoints) and {os.path.join(output_dir, 'compare.json')} holds no benchmark of "
            "every config; add a seed (--seeds ... N) to train one model per config",
        )
    return chosen, earlier


def benchmark_settings(cfg, image_size, repeats):
    """How the trained models are measured: as the first config ``cfg`` was trained (device,
    precision), at ``image_size`` (default: the scale it is tested at) with ``repeats`` timed
    calls; checked, so that a bad --image-size or --repeats is refused before anything trains."""
    settings = BenchmarkSettings(
        device="cuda" if cfg.MODEL.DEVICE.startswith("cuda") else "cpu",
        amp=cfg.SOLVER.AMP.ENABLED,  # measured as trained
        image_size=(cfg.INPUT.MIN_SIZE_TEST or NATIVE_BENCHMARK_SIZE) if image_size is None
        else image_size,
        repeats=repeats,
        train_repeats=0,
    )
    settings.check()
    return settings


def compare(config_files, output_dir, seeds=(0,), opts=(), *, num_gpus=1, jobs=1,
            image_size=None, repeats=None, overwrite=False):
    """Train (or reuse) every config x seed, benchmark the trained models, write the comparison.

    Args:
        config_files (list[str]): configs; the first is the baseline of the t-tests and ratios.
        output_dir (str): the comparison folder (see the module docstring).
        seeds (list[int]): the seeds every config is trained with.
        opts (list[str]): KEY VALUE overrides applied to every run.
        num_gpus (int): passed to train_net.py.
        jobs (int): runs trained at once on this machine (one device, or the CPU).
        image_size (int or None): side of the benchmark's synthetic image; by default the first
            config's INPUT.MIN_SIZE_TEST, the scale its models are tested at (512 for configs
            tested at native size).
        repeats (int or None): timed inference calls per config; by default the device's.
        overwrite (bool): replace an earlier report lacking some of this one's configs or seeds.

    Returns:
        dict: the report written to compare.json.
    """
    if jobs < 1:
        raise UserInputError(f"--jobs {jobs}: train at least 1 run at a time.")
    runs = plan_runs(config_files, list(seeds), list(opts), output_dir)
    check_earlier_report(runs, output_dir, overwrite)
    settings = benchmark_settings(runs[0].cfg, image_size, repeats)  # checked before any training
    benchmarked, measured = plan_benchmark(runs, output_dir)
    run_results = run_all(runs, num_gpus, jobs)
    if measured is None:
        named_cfgs = [(name, _trained_cfg(run)) for name, run in benchmarked.items()]
        with tqdm(desc="benchmark of the trained models", unit="call") as progress:
            measured = benchmark(named_cfgs, settings, progress)
    elif measured["reused_from"]:
        tqdm.write(f"benchmark: kept from {measured['reused_from']} (no trained model left of "
                   "every config)")
    else:
        tqdm.write(f"benchmark: none, {measured['not_measured']}")
    report = summarize(runs, run_results, measured)
    write_comparison(report, output_dir)
    return report


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", nargs="+", required=True, metavar="CFG",
                        help="configs to compare; the first is the baseline of the t-tests")
    parser.add_argument("--output", required=True, metavar="DIR", help="comparison folder")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0],
                        help="seeds every config is trained with (default: 0)")
    parser.add_argument("--num-gpus", type=int, default=1, help="per run, as in train_net.py")
    parser.add_argument("--jobs", type=int, default=1,
                        help="runs trained at once, sharing the device and the CPU cores of the "
                        "data loaders (default: 1)")
    parser.add_argument("--image-size", type=int,
                        help="side of the synthetic image of the speed benchmark "
                        "(default: INPUT.MIN_SIZE_TEST of the first config, or 512 for configs "
                        "tested at native size)")
    parser.add_argument("--repeats", type=int, help="timed inference calls per config "
                        "(default: as tools/benchmark.py, per device)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an earlier report of DIR that has configs or seeds this "
                        "one lacks (its runs stay)")
    return cli.parse_with_overrides(parser, argv)


def main(argv):
    args = parse_args(argv)
    try:
        compare(args.config_file, args.output, args.seeds, args.opts, num_gpus=args.num_gpus,
                jobs=args.jobs, image_size=args.image_size, repeats=args.repeats,
                overwrite=args.overwrite)
    except RunFailed as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"Wrote {os.path.join(args.output, 'compare')}.md, .csv, .json and .png")
    return 0


if __name__ == "__main__":
    raise SystemExit(cli.run(main))
