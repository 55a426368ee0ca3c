"""A picture of a neck's wiring, drawn from its table in ``maskrcnnpp.modeling.topology``.

Node X^{i,j} sits at column j and pyramid level i (level 0, the finest, at the top, as in UNet++'s
figures); column 0 holds the lateral projections of the bottom-up features, drawn with their
inputs (res2...) on the left, and the last node of each row is a pyramid output, drawn ringed with
its level (p2...) on the right. Every edge of the table is one arrow, styled by its resizer: a
same-level input is grey (skips over several columns arc above their row), an upsampled one blue,
a max-pooled one orange. Grid positions that a topology leaves out are faint dots, so topologies
drawn side by side compare at a glance.

Every artist carries a ``gid``: ``"node x<i>_<j>"`` for a node's marker and
``"edge x<a>_<b>-x<i>_<j>"`` for an edge's arrow, so tests can count what was drawn against the
table.
"""
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import FancyArrowPatch

from ..errors import UserInputError, check_choice
from ..modeling.topology import WIRINGS, Node, pyramid_nodes

__all__ = ["TITLES", "MIN_LEVELS", "MAX_LEVELS", "wiring_nodes", "draw_wiring", "wiring_figure"]

TITLES = {
    "dense": "dense (UNet++)",
    "nested": "nested (UNet+)",
    "fullscale": "fullscale (UNet 3+)",
    "fpn": "fpn (detectron2's FPN)",
}
# Fewer than 2 levels has nothing to fuse; beyond 8 the grid's labels no longer fit.
MIN_LEVELS, MAX_LEVELS = 2, 8

EDGE_STYLES = {  # resize -> colour and legend label
    "identity": ("0.45", "same level"),
    "upsample": ("tab:blue", "upsampled (from a coarser level)"),
    "maxpool": ("tab:orange", "max-pooled (from a finer level)"),
}
LATERAL_COLOR, NODE_COLOR = "#d9d9d9", "#9ecae1"
MARKER_SIZE = 30  # points; the arrows stop at the marker's edge


def check_levels(num_levels, key="levels"):
    """UserInputError unless ``num_levels`` is a number of levels the figure can draw."""
    if not MIN_LEVELS <= num_levels <= MAX_LEVELS:
        raise UserInputError(
            f"{key} {num_levels} is not drawable; choose {MIN_LEVELS} to {MAX_LEVELS} "
            f"(4 for res2-res5, the R-CNN neck)."
        )
    return num_levels


def wiring_nodes(wiring, num_levels):
    """Every node the figure draws for ``wiring``: the laterals X^{i,0}, then the computed nodes."""
    laterals = [Node(i, 0) for i in range(num_levels)]
    return laterals + [node for node in wiring if node.column != 0]


def _position(node):
    return node.column, -node.level


def _passes_through(source, target, nodes):
    """Whether the straight segment source -> target crosses another drawn node."""
    (x0, y0), (x1, y1) = _position(source), _position(target)
    for node in nodes:
        if node in (source, target):
            continue
        x, y = _position(node)
        cross = (x1 - x0) * (y - y0) - (y1 - y0) * (x - x0)
        inside = min(x0, x1) <= x <= max(x0, x1) and min(y0, y1) <= y <= max(y0, y1)
        if cross == 0 and inside:
            return True
    return False


def _connection(source, target, nodes):
    """A straight arrow, or an arc where a straight one would run through another node (a skip
    along its row arcs above it), so no edge hides behind a chain of others."""
    return "arc3,rad=-0.3" if _passes_through(source, target, nodes) else "arc3,rad=0"


def draw_wiring(axes, topology, num_levels, first_feature=2):
    """Draw ``topology``'s wiring of ``num_levels`` levels into ``axes``.

    Args:
        axes: a matplotlib Axes.
        topology (str): a name of ``WIRINGS``.
        num_levels (int): pyramid levels (4: res2...res5 -> p2...p5).
        first_feature (int): the index of the finest level's names, res<k> and p<k>.

    Returns:
        dict: the drawn ``nodes`` (list of Node) and ``edges`` (list of (source, target) Nodes).
    """
    check_choice("topology", topology, WIRINGS)
    check_levels(num_levels)
    wiring = WIRINGS[topology](num_levels)
    top = num_levels - 1
    nodes = wiring_nodes(wiring, num_levels)
    outputs = set(pyramid_nodes(num_levels, top))

    for i in range(num_levels):  # grid positions this topology leaves out
        for j in range(1, top - i + 1):
            if Node(i, j) not in wiring:
                axes.plot(*_position(Node(i, j)), "o", color="0.85", markersize=5, zorder=1,
                          gid=f"slot x{i}_{j}")

    edges = []
    for target, inputs in wiring.items():
        for edge in inputs:
            color, _ = EDGE_STYLES[edge.resize]
            arrow = FancyArrowPatch(
                _position(edge.source), _position(target), arrowstyle="-|>", mutation_scale=11,
                connectionstyle=_connection(edge.source, target, nodes), color=color, linewidth=1.3,
                shrinkA=MARKER_SIZE / 2, shrinkB=MARKER_SIZE / 2 + 1, zorder=2,
                gid=f"edge {edge.source}-{target}",
            )
            axes.add_patch(arrow)
            edges.append((edge.source, target))

    for node in nodes:
        x, y = _position(node)
        is_output = node in outputs
        axes.plot(x, y, "o", markersize=MARKER_SIZE,
                  color=LATERAL_COLOR if node.column == 0 else NODE_COLOR,
                  markeredgecolor="black" if is_output else "0.4",
                  markeredgewidth=2.2 if is_output else 0.8, zorder=3, gid=f"node {node}")
        axes.text(x, y, f"$X^{{{node.level},{node.column}}}$", ha="center", va="center",
                  fontsize=9, zorder=4)
        if is_output:
            axes.annotate(f"p{node.level + first_feature}", (x, y), xytext=(24, 0),
                          textcoords="offset points", ha="left", va="center", fontsize=10,
                          fontweight="bold")
        if node.column == 0:
            axes.annotate(f"res{node.level + first_feature}", (x, y), xytext=(-24, 0),
                          textcoords="offset points", ha="right", va="center", fontsize=10)

    axes.set_title(TITLES.get(topology, topology))
    axes.set_xlim(-0.9, top + 0.9)
    axes.set_ylim(-top - 0.45, 0.6)
    axes.set_aspect("equal")
    axes.set_axis_off()
    return {"nodes": nodes, "edges": edges}


def wiring_figure(topologies, num_levels=4):
    """A Figure with one panel per topology, side by side, and a legend of the edge kinds."""
    topologies = list(topologies)
    if not topologies:
        raise UserInputError("Name at least one topology to draw.")
    for topology in topologies:
        check_choice("topology", topology, WIRINGS)
    check_levels(num_levels)
    top = num_levels - 1
    width = 0.95 * num_levels + 0.9  # inches per panel; the height follows the grid's aspect
    height = width * (top + 1.05) / (top + 1.8) + 0.8
    figure = Figure(figsize=(width * len(topologies), height), layout="constrained")
    panels = figure.subplots(1, len(topologies), squeeze=False)[0]
    kinds = set()
    for axes, topology in zip(panels, topologies):
        draw_wiring(axes, topology, num_levels)
        kinds.update(e.resize for inputs in WIRINGS[topology](num_levels).values() for e in inputs)
    handles = [Line2D([], [], color=color, linewidth=1.5, label=label)
               for resize, (color, label) in EDGE_STYLES.items() if resize in kinds]
    handles.append(Line2D([], [], linestyle="", marker="o", markersize=9, color=NODE_COLOR,
                          markeredgecolor="black", markeredgewidth=2, label="pyramid output"))
    figure.legend(handles=handles, loc="outside lower center", ncols=len(handles), frameon=False,
                  fontsize=9)
    return figure
