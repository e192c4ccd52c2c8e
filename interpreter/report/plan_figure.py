"""The execution graph as a figure: columns of steps by dependency depth, arrows along the edges.

Sweep families collapse to one node (``ta[…] ×15``), and so do the many steps of one statement
(``evaluate ×30``), so that neither drowns the picture; within a column, nodes sit near the mean
height of their inputs, which keeps most arrows short and uncrossed. A node's
kind is shown by its box shape and a legend as well as by colour. The figure shows the plan only;
which steps came from the cache in a run is the step table's job (so a warm run redraws nothing).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .bundle import StudyView
from .figures import COLOURS, Figure, new_figure, study_figure

if TYPE_CHECKING:
    import networkx as nx

__all__ = ["collapsed_graph", "execution_graph"]

# kind -> (box style, edge line style, colour); any other kind is a result.
LOOKS = {
    "Model": ("round", "-", COLOURS[0]),
    "Dataset": ("square", "-", COLOURS[2]),
    "Task": ("square", "-", COLOURS[2]),
}
RESULT_LOOK = ("round", "--", COLOURS[1])
LEGEND = (
    ("model: rounded box", LOOKS["Model"]),
    ("data: square box", LOOKS["Dataset"]),
    ("result: dashed box", RESULT_LOOK),
)


def _group_of(study: StudyView) -> dict[str, tuple[str, str]]:
    """``step -> (node id, label)`` for every step drawn as part of a collapsed node."""
    out: dict[str, tuple[str, str]] = {}
    for fam, members in study.families().items():
        out.update({m.name: (fam, f"{fam}[…] ×{len(members)}") for m in members})
    by_statement: dict[tuple[str, str], list[str]] = {}
    for s in study.steps:
        if s.name not in out and s.statement:
            by_statement.setdefault((s.statement, s.op), []).append(s.name)
    for (statement, op), names in by_statement.items():
        if len(names) >= 3:
            out.update({n: (f"{statement}:{op}", f"{statement} ×{len(names)}") for n in names})
    by_call: dict[tuple[str, str], list[str]] = {}  # data made at each point of an axis grid
    for s in study.steps:
        if s.name not in out and "(" in s.name:
            by_call.setdefault((s.name.split("(")[0], s.op), []).append(s.name)
    for (stem, op), names in by_call.items():
        if len(names) >= 3:
            out.update({n: (f"{stem}(…):{op}", f"{stem}(…) ×{len(names)}") for n in names})
    return out


def collapsed_graph(study: StudyView) -> nx.DiGraph:
    """The plan graph with sweeps and many-step statements merged; nodes carry kind and label."""
    import networkx as nx

    groups = _group_of(study)
    graph = nx.DiGraph()
    for name in study.nodes or [s.name for s in study.steps]:
        node, label = groups.get(name, (name, name))
        step = study.step(name)
        graph.add_node(node, kind=step.kind if step else "", label=label)
    for src, dst in study.edges:
        a, b = groups.get(src, (src,))[0], groups.get(dst, (dst,))[0]
        if a != b and a in graph and b in graph:
            graph.add_edge(a, b)
    return graph


def _layout(graph: nx.DiGraph) -> tuple[dict[str, tuple[float, float]], int, int]:
    """Columns by dependency depth; in each column, nodes ordered by their inputs' mean height."""
    import networkx as nx

    pos: dict[str, tuple[float, float]] = {}
    layers = [list(layer) for layer in nx.topological_generations(graph)]
    for x, layer in enumerate(layers):

        def height(n: str) -> float:
            ys = [pos[p][1] for p in graph.predecessors(n) if p in pos]
            return sum(ys) / len(ys) if ys else 0.0

        layer.sort(key=lambda n: -height(n))
        pos.update({n: (float(x), (len(layer) - 1) / 2 - y) for y, n in enumerate(layer)})
    return pos, len(layers), max(len(layer) for layer in layers)


@study_figure
def execution_graph(study: StudyView) -> list[Figure]:
    import networkx as nx
    from matplotlib.patches import FancyArrowPatch, Patch

    graph = collapsed_graph(study)
    if graph.number_of_nodes() == 0 or not nx.is_directed_acyclic_graph(graph):
        return []
    pos, columns, tallest = _layout(graph)
    fig = new_figure(min(2.0 + 1.9 * columns, 16.0), min(1.2 + 0.42 * tallest, 24.0))
    ax = fig.axes[0]
    boxes = {}
    for node, (x, y) in pos.items():
        box, line, colour = LOOKS.get(graph.nodes[node]["kind"], RESULT_LOOK)
        text = ax.text(
            x,
            y,
            graph.nodes[node]["label"],
            ha="center",
            va="center",
            fontsize=7,
            bbox={"boxstyle": f"{box},pad=0.3", "fc": "white", "ec": colour, "lw": 1.2, "ls": line},
        )
        boxes[node] = text.get_bbox_patch()
    for src, dst in graph.edges:  # clipped to the boxes' outlines, so arrows meet the boxes' edges
        ax.add_patch(
            FancyArrowPatch(
                pos[src],
                pos[dst],
                patchA=boxes[src],
                patchB=boxes[dst],
                arrowstyle="-|>",
                mutation_scale=8,
                color="#777777",
                linewidth=0.7,
                shrinkA=1,
                shrinkB=1,
                connectionstyle="arc3,rad=0.05",
                zorder=0,
            )
        )
    ax.set_xlim(-0.7, columns - 0.3)
    ax.set_ylim(-tallest / 2 - 0.2, tallest / 2 + 0.2)
    ax.axis("off")
    handles = [
        Patch(facecolor="white", edgecolor=c, linestyle=ls, label=label) for label, (_, ls, c) in LEGEND
    ]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(0, 1.02), ncols=3, fontsize=7)
    return [
        Figure(
            slug="execution-graph",
            title="Execution graph",
            section="Provenance",
            mpl=fig,
            alt=f"The plan as a graph of {len(study.steps)} steps in {columns} columns "
            "by dependency depth; arrows run from inputs to the steps that use them. Sweeps, and "
            "statements that expand to many steps, are drawn as one node.",
            data={"nodes": list(graph.nodes), "edges": [list(e) for e in graph.edges]},
        )
    ]
