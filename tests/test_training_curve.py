"""tools/training_curve.py: the validation curve of a run, read from its training log."""
import json

import pytest
from conftest import load_tool

from maskrcnnpp import cli
from maskrcnnpp.analysis.training_curve import converged_point, read_branch, read_curve

training_curve = load_tool("training_curve")
# mask AP at steps 2000, 4000, 6000, 8000: the best is 45.0; 44.2 at 6000 is within 1 AP of it
MASK_AP = {1999: 30.0, 3999: 40.0, 5999: 44.2, 7999: 45.0}
# a branch from the step-4000 checkpoint, 2000 steps with the LR dropping after 1400: its final
# evaluation, which detectron2 logs at MAX_ITER, stands for a 6000-step schedule
BRANCH_AP = {2000: 45.5}


def write_run(folder, evaluations=MASK_AP, test=("dsb2018_val",), weights="", steps=(5000, 9000),
              max_iter=8000):
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(
        f"DATASETS:\n  TEST: {list(test)}\nMODEL:\n  WEIGHTS: '{weights}'\n"
        f"SOLVER:\n  BASE_LR: {0.001 if weights else 0.01}\n  STEPS: {list(steps)}\n"
        f"  MAX_ITER: {max_iter}\n")
    prefix = "" if len(test) == 1 else f"{test[0]}/"
    lines = []
    for iteration in sorted(set(range(19, max_iter, 20)) | set(evaluations)):
        lines.append({"iteration": iteration, "time": 0.5 if iteration < 4000 else 0.7,
                      "total_loss": 1.0})
        if iteration in evaluations:
            ap = evaluations[iteration]
            lines.append({"iteration": iteration, f"{prefix}nuclei/mask_AP": ap,
                          f"{prefix}nuclei/iou": ap / 50, f"{prefix}nuclei/dsb_score": ap / 100,
                          f"{prefix}nuclei/pq": ap / 80})
    (folder / "metrics.json").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return folder


def write_branch(folder, weights="out/fpn_curve/model_0003999.pth"):
    return write_run(folder, BRANCH_AP, weights=weights, steps=(1400,), max_iter=2000)


def test_the_curve_has_each_evaluation_at_its_step_with_the_step_time_before_it(tmp_path):
    points = read_curve(write_run(tmp_path / "run"))
    assert [p["iteration"] for p in points] == [2000, 4000, 6000, 8000]
    assert [p["mask_AP"] for p in points] == [30.0, 40.0, 44.2, 45.0]
    assert points[1]["iou"] == pytest.approx(0.8) and points[1]["pq"] == pytest.approx(0.5)
    # median of the step times logged since the evaluation before: 0.5 s until 4000, then 0.7 s
    assert [p["s_per_step"] for p in points] == [0.5, 0.5, 0.7, 0.7]


def test_the_final_evaluation_logged_at_max_iter_is_at_its_step(tmp_path):
    # detectron2 skips the periodic evaluation at the last step and evaluates after training
    evaluations = {1999: 30.0, 3999: 40.0, 5999: 44.2, 8000: 46.0}
    points = read_curve(write_run(tmp_path / "run", evaluations, max_iter=8000))
    assert [p["iteration"] for p in points] == [2000, 4000, 6000, 8000]
    assert points[-1]["mask_AP"] == 46.0


def test_the_converged_step_is_the_first_within_the_tolerance_of_the_best(tmp_path):
    points = read_curve(write_run(tmp_path / "run"))
    assert converged_point(points, 1.0)["iteration"] == 6000  # 44.2 >= 45.0 - 1
    assert converged_point(points, 0.5)["iteration"] == 8000
    assert converged_point(points, 15.0)["iteration"] == 2000


def test_a_branch_stands_for_the_schedule_it_completes(tmp_path):
    branch = read_branch(write_branch(tmp_path / "branch"))
    # 4000 steps of the run's checkpoint model_0003999.pth, then the branch's 2000
    assert (branch["iteration"], branch["start"], branch["lr_drops"]) == (6000, 4000, [5400])
    assert branch["mask_AP"] == 45.5
    # the best is the branch's 45.5 and the fewest steps within 1 AP of it are its 6000; the
    # run's own 44.2 at step 6000 is 1.3 below
    points = read_curve(write_run(tmp_path / "run"))
    assert converged_point(points + [branch], 1.0) is branch
    assert converged_point(points + [branch], 1.5)["iteration"] == 6000


def test_several_test_datasets_prefix_the_keys_with_the_first(tmp_path):
    points = read_curve(write_run(tmp_path / "run", test=("dsb2018_val", "other")))
    assert [p["mask_AP"] for p in points] == [30.0, 40.0, 44.2, 45.0]


def test_the_tool_writes_the_curve_and_keeps_the_training_log(tmp_path, capsys):
    run = write_run(tmp_path / "run")
    out = tmp_path / "curve"
    assert cli.run(training_curve.main, ["--run", str(run), "--out", str(out)]) == 0
    assert "best mask AP 45.00 at step 8000; within 1 AP of it from step 6000" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["curve.json", "curve.md", "curve.png", "run"]
    assert (out / "run" / "metrics.json").read_text() == (run / "metrics.json").read_text()
    row = next(line for line in (out / "curve.md").read_text().splitlines()
               if line.startswith("| 6000 "))
    assert [cell.strip() for cell in row.strip("|").split("|")] == [
        "6000", "44.20", "0.884", "0.442", "0.552", "0.700"]
    assert "The learning rate drops at steps 5000, 9000 (SOLVER.STEPS)." in (out / "curve.md").read_text()
    summary = json.loads((out / "curve.json").read_text())
    assert (summary["converged_step"], summary["lr_drops"]) == (6000, [5000, 9000])


def test_the_tool_puts_branches_beside_the_curve_and_keeps_their_logs(tmp_path, capsys):
    run, branch = write_run(tmp_path / "run"), write_branch(tmp_path / "from_4000")
    out = tmp_path / "curve"
    argv = ["--run", str(run), "--branch", str(branch), "--out", str(out)]
    assert cli.run(training_curve.main, argv) == 0
    assert ("best mask AP 45.50 at step 6000 (the branch from step 4000 at LR 0.001, dropping at 5400)"
            in capsys.readouterr().out)
    assert (out / "branches" / "from_4000" / "metrics.json").read_text() == (
        branch / "metrics.json").read_text()
    markdown = (out / "curve.md").read_text()
    row = next(line for line in markdown.splitlines() if line.startswith("| 6000 ") and "4000" in line)
    assert [cell.strip() for cell in row.strip("|").split("|")] == [
        "6000", "4000", "0.001", "5400", "45.50", "0.910", "0.455", "0.569", "0.500"]
    assert "the shortest schedule within 1 mask AP of it: **6000 steps**" in markdown


@pytest.mark.parametrize("case,message", [
    ("no evaluation", "holds no evaluation yet (TEST.EVAL_PERIOD > 0"),
    ("not a run", "holds no metrics.json: pass the OUTPUT_DIR of a tools/train_net.py run"),
    ("out in run", "lies in the run folder"),
    ("negative tolerance", "--tolerance -1: give 0 or more mask AP"),
    ("branch not from a checkpoint", "is not a branch: its MODEL.WEIGHTS (none) is not a checkpoint"),
    ("branches of one name", "--branch folders share a name"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, case, message):
    run = write_run(tmp_path / "run", evaluations={} if case == "no evaluation" else MASK_AP)
    if case == "not a run":
        (run / "metrics.json").unlink()
    out = run / "curve" if case == "out in run" else tmp_path / "curve"
    argv = ["--run", str(run), "--out", str(out)]
    argv += ["--tolerance", "-1"] if case == "negative tolerance" else []
    if case == "branch not from a checkpoint":
        argv += ["--branch", str(write_run(tmp_path / "branch"))]
    if case == "branches of one name":
        argv += ["--branch", str(write_branch(tmp_path / "a" / "branch")),
                 "--branch", str(write_branch(tmp_path / "b" / "branch"))]
    assert cli.run(training_curve.main, argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err
    assert not out.exists()
