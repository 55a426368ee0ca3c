"""The wiring figure draws exactly the topology tables; tools/draw_wiring.py fails in one line."""
import os

import pytest
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch

from maskrcnnpp.analysis.wiring_figure import draw_wiring, wiring_figure
from maskrcnnpp.cli import run
from maskrcnnpp.errors import UserInputError
from maskrcnnpp.modeling.topology import WIRINGS, Node, pyramid_nodes

from conftest import load_tool, run_tool


def _drawn(axes):
    """gid -> artist of every node marker and edge arrow in ``axes``."""
    artists = list(axes.lines) + list(axes.patches)
    return {a.get_gid(): a for a in artists if (a.get_gid() or "").startswith(("node ", "edge "))}


@pytest.mark.parametrize("num_levels", [3, 4, 5])
@pytest.mark.parametrize("topology", sorted(WIRINGS))
def test_one_marker_per_node_and_one_arrow_per_edge(topology, num_levels):
    wiring = WIRINGS[topology](num_levels)
    axes = Figure().subplots()
    draw_wiring(axes, topology, num_levels)
    drawn = _drawn(axes)

    laterals = {Node(i, 0) for i in range(num_levels)}
    expected_nodes = {f"node {n}" for n in laterals | set(wiring)}
    expected_edges = {f"edge {e.source}-{target}"
                      for target, inputs in wiring.items() for e in inputs}
    assert len(expected_edges) == sum(len(inputs) for inputs in wiring.values())  # no repeated edge
    assert {g for g in drawn if g.startswith("node ")} == expected_nodes
    assert {g for g in drawn if g.startswith("edge ")} == expected_edges
    node_markers = [a for a in axes.lines if (a.get_gid() or "").startswith("node ")]
    arrows = [a for a in axes.patches if isinstance(a, FancyArrowPatch)]
    assert len(node_markers) == len(expected_nodes)
    assert len(arrows) == len(expected_edges)

    # The pyramid outputs, and only they, are ringed; each arrow is coloured by its resizer.
    outputs = {f"node {n}" for n in pyramid_nodes(num_levels, num_levels - 1)}
    ringed = {a.get_gid() for a in node_markers if a.get_markeredgewidth() > 2}
    assert ringed == outputs
    colors = {e.resize: drawn[f"edge {e.source}-{t}"].get_edgecolor()
              for t, inputs in wiring.items() for e in inputs}
    assert len(set(colors.values())) == len(colors)


def test_dense_and_fpn_side_by_side():
    figure = wiring_figure(["dense", "fpn"], 4)
    dense, fpn = figure.axes
    # UNet++ on 4 levels: X^{i,j} takes j + 1 inputs; FPN: a lateral and a top-down per level.
    assert len([g for g in _drawn(dense) if g.startswith("edge ")]) == 16
    assert len([g for g in _drawn(fpn) if g.startswith("edge ")]) == 6


def test_bad_topology_and_levels_are_refused():
    with pytest.raises(UserInputError, match="Did you mean 'dense'"):
        wiring_figure(["densee"])
    with pytest.raises(UserInputError, match="levels 1 is not drawable"):
        wiring_figure(["dense"], 1)


def test_tool_writes_png_and_fails_in_one_line(tmp_path, capsys):
    tool = load_tool("draw_wiring")
    out = tmp_path / "wiring.png"
    assert run(tool.main, ["--topology", "nested", "--levels", "3", "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in os.listdir(tmp_path) if p != "wiring.png"]  # no temporary file left
    capsys.readouterr()

    bad = tmp_path / "bad.png"
    for argv, message in [
        (["--topology", "dense", "densee", "--out", str(bad)], "--topology='densee' is not valid"),
        (["--levels", "9", "--out", str(bad)], "--levels 9 is not drawable"),
        (["--out", str(tmp_path / "wiring.svg")], "is not a .png file"),
    ]:
        assert run(tool.main, argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not bad.exists()


@pytest.mark.slow
def test_tool_bad_topology_from_the_command_line(tmp_path):
    result = run_tool("draw_wiring.py", "--topology", "nestd", "--out", tmp_path / "w.png")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: --topology='nestd' is not valid")
    assert not (tmp_path / "w.png").exists()
