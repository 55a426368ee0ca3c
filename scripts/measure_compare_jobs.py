#!/usr/bin/env python3
"""Total wall time of one tools/compare.py comparison run with --jobs 1 and with --jobs 2.

    python scripts/measure_compare_jobs.py                  # 2 rounds, the synthetic quickstart

Each round runs the same comparison (FPN and dense quickstart configs x --seeds, --max-iter
steps) into a fresh folder under --work, once per --jobs value, alternating so that a change in
the machine's load hits both alike. Writes OUT.md and OUT.json (default
docs/results/compare_jobs), naming the machine. On a 2-core machine expect no gain: two
trainings share the two cores that one would use alone (docs/compare.md).
"""
import argparse
import os
import shutil
import subprocess
import sys
import time

from maskrcnnpp.io_utils import write_json, write_text
from maskrcnnpp.machine import cpu_name

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = [os.path.join(REPO, "configs", name)
           for name in ("quickstart_synthetic.yaml", "quickstart_synthetic_dense.yaml")]


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--max-iter", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--work", default="/tmp/measure_compare_jobs")
    parser.add_argument("--out", default=os.path.join(REPO, "docs", "results", "compare_jobs"))
    return parser.parse_args(argv)


def time_comparison(jobs, args, output):
    """Seconds that one compare.py call takes from start to report, trainings included."""
    shutil.rmtree(output, ignore_errors=True)
    command = [sys.executable, os.path.join(REPO, "tools", "compare.py"), "--config-file",
               *CONFIGS, "--seeds", *map(str, args.seeds), "--jobs", str(jobs), "--output", output,
               "--image-size", "128", "--repeats", "3", "SOLVER.MAX_ITER", str(args.max_iter)]
    env = dict(os.environ)
    env.setdefault("DETECTRON2_DATASETS", os.path.join(REPO, "datasets"))
    start = time.perf_counter()
    subprocess.run(command, cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main(argv):
    args = parse_args(argv)
    seconds = {jobs: [] for jobs in args.jobs}
    for round_number in range(args.rounds):
        for jobs in args.jobs:
            taken = time_comparison(jobs, args, os.path.join(args.work, f"jobs{jobs}"))
            seconds[jobs].append(taken)
            print(f"round {round_number + 1}: --jobs {jobs}: {taken:.0f} s", flush=True)
    first = args.jobs[0]
    report = {
        "configs": [os.path.basename(path) for path in CONFIGS], "seeds": args.seeds,
        "max_iter": args.max_iter, "rounds": args.rounds,
        "seconds": {str(jobs): taken for jobs, taken in seconds.items()},
        "machine": {"cpu": cpu_name(),
                    "cpu_count": os.cpu_count(), "load_average_after": os.getloadavg()},
    }
    lines = [
        f"# tools/compare.py --jobs: total wall time on {os.cpu_count()} CPU threads",
        "",
        f"{len(CONFIGS) * len(args.seeds)} runs ({', '.join(report['configs'])} x seeds "
        f"{args.seeds}, {args.max_iter} steps each, evaluated and benchmarked), "
        f"{args.rounds} round(s) alternating the --jobs values (scripts/measure_compare_jobs.py).",
        "",
        "| --jobs | wall time per round (s) | mean (s) | ratio to --jobs " + f"{first} |",
        "|---:|---|---:|---:|",
    ]
    mean = {jobs: sum(taken) / len(taken) for jobs, taken in seconds.items()}
    for jobs, taken in seconds.items():
        lines.append(f"| {jobs} | {', '.join(f'{t:.0f}' for t in taken)} | {mean[jobs]:.0f} | "
                     f"{mean[jobs] / mean[first]:.2f} |")
    lines += ["", f"Load average after the last round: "
              f"{', '.join(f'{x:.2f}' for x in report['machine']['load_average_after'])}."]
    write_json(report, args.out + ".json", indent=2)
    write_text("\n".join(lines) + "\n", args.out + ".md")
    print("\n".join(lines))


if __name__ == "__main__":
    main(sys.argv[1:])
