"""The wiring of the nested pyramid grid, as data.

Nodes follow UNet++'s names X^{i,j}: ``i`` is the pyramid level (0 = finest, p2) and ``j`` the
column. Column 0 holds the lateral projections of the bottom-up features (res2...res5); every
other node is computed from a list of input edges. A *wiring* maps each computed node to its
edges, in an order where a node's inputs always come before it, so the neck's ``forward`` is a
plain walk over the table and tests can assert the wiring directly. Each topology is one
function that builds such a table; nothing here touches tensors.

With ``L = num_levels - 1``, the pyramid of depth ``d`` (1 <= d <= L) takes from each row the node
``P_i^(d) = X^{i, min(d, L - i)}``; ``d = L`` is the full pyramid, smaller depths are UNet++'s
pruned sub-networks.
"""

from typing import Dict, Iterable, List, NamedTuple

__all__ = [
    "Node",
    "Edge",
    "WIRINGS",
    "dense_wiring",
    "nested_wiring",
    "fpn_wiring",
    "fullscale_wiring",
    "pyramid_nodes",
    "available_depths",
    "schedule",
]


class Node(NamedTuple):
    """X^{level, column} of the grid."""

    level: int
    column: int

    def __str__(self):
        return f"x{self.level}_{self.column}"


class Edge(NamedTuple):
    """One input of a node: the source node and how it is resized to the node's level.

    ``resize`` is "identity" (same level), "upsample" (from a coarser level) or "maxpool"
    (from a finer level); the factor follows from the two levels.
    """

    source: Node
    resize: str


Wiring = Dict[Node, List[Edge]]


def _edge(source, target_level):
    if source.level == target_level:
        return Edge(source, "identity")
    return Edge(source, "upsample" if source.level > target_level else "maxpool")


def dense_wiring(num_levels) -> Wiring:
    """UNet++: X^{i,j} takes every earlier node of its row, X^{i,0..j-1}, and U(X^{i+1,j-1})."""
    top = num_levels - 1
    return {
        Node(i, j): [_edge(Node(i, k), i) for k in range(j)] + [_edge(Node(i + 1, j - 1), i)]
        for j in range(1, top + 1)
        for i in range(top - j + 1)
    }


def nested_wiring(num_levels) -> Wiring:
    """UNet+: X^{i,j} takes only its row predecessor X^{i,j-1} and U(X^{i+1,j-1})."""
    top = num_levels - 1
    return {
        Node(i, j): [_edge(Node(i, j - 1), i), _edge(Node(i + 1, j - 1), i)]
        for j in range(1, top + 1)
        for i in range(top - j + 1)
    }


def fpn_wiring(num_levels) -> Wiring:
    """FPN: only the last node of each row, X^{i,L-i} = lateral X^{i,0} + U(X^{i+1,L-i-1}).

    X^{i+1,L-i-1} is the merged (pre-output-conv) feature of the level above, as in detectron2;
    the top level is its lateral X^{L,0}.
    """
    top = num_levels - 1
    return {
        Node(i, top - i): [_edge(Node(i, 0), i), _edge(Node(i + 1, top - i - 1), i)]
        for i in reversed(range(top))
    }


def fullscale_wiring(num_levels) -> Wiring:
    """UNet 3+: the last node of each row fuses every lateral and the coarser rows' outputs.

    Finer laterals are max-pooled down, coarser ones upsampled; the coarser outputs X^{k,L-k}
    (i < k < L) are upsampled too. X^{L,0} is both the top lateral and the top output, so it
    enters once.
    """
    top = num_levels - 1
    return {
        Node(i, top - i): [_edge(Node(k, 0), i) for k in range(num_levels)]
        + [_edge(Node(k, top - k), i) for k in range(i + 1, top)]
        for i in reversed(range(top))
    }


WIRINGS = {
    "dense": dense_wiring,
    "nested": nested_wiring,
    "fpn": fpn_wiring,
    "fullscale": fullscale_wiring,
}


def pyramid_nodes(num_levels, depth) -> List[Node]:
    """The pyramid of ``depth``, finest level first: P_i^(d) = X^{i, min(d, L - i)}."""
    top = num_levels - 1
    return [Node(i, min(depth, top - i)) for i in range(num_levels)]


def available_depths(wiring, num_levels) -> List[int]:
    """The depths whose pyramid nodes all exist: 1..L for dense/nested, only L for fpn/fullscale."""
    return [
        depth
        for depth in range(1, num_levels)
        if all(n.column == 0 or n in wiring for n in pyramid_nodes(num_levels, depth))
    ]


def schedule(wiring, outputs: Iterable[Node]) -> List[Node]:
    """The computed nodes that ``outputs`` depend on, in wiring order (UNet++ pruning)."""
    needed = set()
    pending = [n for n in outputs if n in wiring]
    while pending:
        node = pending.pop()
        if node not in needed:
            needed.add(node)
            pending.extend(e.source for e in wiring[node] if e.source in wiring)
    return [n for n in wiring if n in needed]
