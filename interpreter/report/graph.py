"""The execution graph as a figure: columns of steps by dependency depth, arrows along the edges.

Sweep families collapse to one node (``ta[…] ×15``) so a sweep does not drown the picture. A node's
kind is shown by its box shape and a legend as well as by colour, and a cache hit is written in
the label (``✓`` cached).
"""

from __future__ import annotations

import networkx as nx
from matplotlib.lines import Line2D
from matplotlib.patches import FancyArrowPatch

from mlspec.report.figures import COLOURS, Figure, new_figure, study_figure
from mlspec.report.study import StudyView

__all__ = ["execution_graph", "collapsed_graph"]

BOXES = {"Model": "round", "Dataset": "square", "Task": "square"}  # everything else: "round4"
KIND_COLOUR = {"Model": COLOURS[0], "Dataset": COLOURS[2], "Task": COLOURS[2]}


def collapsed_graph(study: StudyView) -> nx.DiGraph:
    """The plan graph with each sweep family merged into one node; nodes carry kind and label."""
    groups = {m.name: fam for fam, members in study.families().items() for m in members}
    sizes = {fam: len(members) for fam, members in study.families().items()}
    graph = nx.DiGraph()
    for name in study.nodes or [s.name for s in study.steps]:
        node = groups.get(name, name)
        step = study.step(name)
        kind = step.kind if step else ""
        label = f"{node}[…] ×{sizes[node]}" if node in sizes else node
        if step is not None and step.cached and node not in sizes:
            label += " ✓"
        graph.add_node(node, kind=kind, label=label)
    for src, dst in study.edges:
        a, b = groups.get(src, src), groups.get(dst, dst)
        if a != b and a in graph and b in graph:
            graph.add_edge(a, b)
    return graph


@study_figure
def execution_graph(study: StudyView) -> list[Figure]:
    graph = collapsed_graph(study)
    if graph.number_of_nodes() == 0 or not nx.is_directed_acyclic_graph(graph):
        return []
    layers = [sorted(layer) for layer in nx.topological_generations(graph)]
    pos = {n: (x, -(y - (len(layer) - 1) / 2)) for x, layer in enumerate(layers) for y, n in enumerate(layer)}
    tallest = max(len(layer) for layer in layers)
    fig = new_figure(min(2.0 + 1.9 * len(layers), 16.0), min(1.2 + 0.42 * tallest, 24.0))
    ax = fig.axes[0]
    for src, dst in graph.edges:
        ax.add_patch(FancyArrowPatch(pos[src], pos[dst], arrowstyle="-|>", mutation_scale=8, color="#777777",
                                     linewidth=0.7, shrinkA=22, shrinkB=22, connectionstyle="arc3,rad=0.05"))
    for node, (x, y) in pos.items():
        kind = graph.nodes[node]["kind"]
        ax.text(x, y, graph.nodes[node]["label"], ha="center", va="center", fontsize=7,
                bbox={"boxstyle": f"{BOXES.get(kind, 'round4')},pad=0.3", "fc": "white",
                      "ec": KIND_COLOUR.get(kind, COLOURS[1]), "lw": 1.2})
    ax.set_xlim(-0.7, len(layers) - 0.3)
    ax.set_ylim(-tallest / 2 - 0.2, tallest / 2 + 0.2)
    ax.axis("off")
    handles = [Line2D([], [], marker=m, linestyle="none", markerfacecolor="white", markeredgecolor=c, label=k)
               for k, m, c in (("Model (rounded)", "o", COLOURS[0]), ("Dataset (square)", "s", COLOURS[2]),
                               ("result (notched)", "D", COLOURS[1]))]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(0, 1.02), ncols=3, fontsize=7)
    cached = sum(1 for s in study.steps if s.cached)
    return [Figure(
        slug="execution-graph", title="Execution graph", section="Provenance", mpl=fig,
        alt=f"The plan as a graph of {len(study.steps)} steps ({cached} cache hits) in {len(layers)} columns "
        "by dependency depth; arrows run from inputs to the steps that use them. Sweeps are drawn as one node.",
        data={"nodes": list(graph.nodes), "edges": [list(e) for e in graph.edges]},
    )]
