"""The execution plan: steps and their dependencies, each step with a derived seed and a content key.

A step's key hashes its operator and version, its resolved parameters, its inputs' *keys* and (for
operators that use randomness) its seed, which derives from the study seed and the step's name. So
editing one line re-runs exactly the steps downstream of it, and adding a step changes no other.

Planning needs only the standard library (``mlspec check`` stays fast); :attr:`Plan.graph` builds a
networkx DiGraph on first use, for callers that want graph algorithms.
"""

from __future__ import annotations

import hashlib
import heapq
import json
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

from .. import registry
from .steps import Lowered, Step, StudyInfo

if TYPE_CHECKING:
    import networkx as nx

__all__ = ["Plan", "build_plan", "derive_seed", "step_key"]


def derive_seed(study_seed: int, step_name: str) -> int:
    digest = hashlib.sha256(f"{study_seed}\x00{step_name}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def step_key(parts: dict[str, Any]) -> str:
    return hashlib.sha256(_canonical(parts).encode()).hexdigest()


@dataclass
class Plan:
    study: StudyInfo
    nodes: dict[str, Step]  # step name -> Step, in declaration order
    edges: list[tuple[str, str]]  # (upstream, downstream)
    families: dict[str, list[str]]
    sources: dict[str, str]

    def __len__(self) -> int:
        return len(self.nodes)

    @cached_property
    def graph(self) -> nx.DiGraph:
        """The plan as a networkx DiGraph (node = step name, attribute "step": Step)."""
        import networkx as nx

        graph = nx.DiGraph()
        graph.add_nodes_from((name, {"step": step}) for name, step in self.nodes.items())
        graph.add_edges_from(self.edges)
        return graph

    @cached_property
    def steps(self) -> list[Step]:
        """Steps in a deterministic topological order (declaration order breaks ties); the plan is
        fixed once built, so the order is computed once."""
        return [self.nodes[n] for n in _topological(list(self.nodes), self.edges)]

    def step(self, name: str) -> Step:
        return self.nodes[name]

    def downstream(self, name: str) -> set[str]:
        after: dict[str, list[str]] = {}
        for a, b in self.edges:
            after.setdefault(a, []).append(b)
        seen: set[str] = set()
        todo = list(after.get(name, []))
        while todo:
            n = todo.pop()
            if n not in seen:
                seen.add(n)
                todo += after.get(n, [])
        return seen

    def to_dot(self) -> str:
        lines = ["digraph mlspec {", "  rankdir=LR;", "  node [shape=box, fontname=Helvetica];"]
        for s in self.steps:
            lines.append(f'  "{_esc(s.name)}" [label="{_esc(s.name)}\\n{s.op}"];')
        for a, b in self.edges:
            lines.append(f'  "{_esc(a)}" -> "{_esc(b)}";')
        return "\n".join(lines + ["}"]) + "\n"

    def to_mermaid(self) -> str:
        ids = {s.name: f"s{i}" for i, s in enumerate(self.steps)}
        lines = ["graph LR"]
        for s in self.steps:
            lines.append(f'  {ids[s.name]}["{s.name.replace(chr(34), "#quot;")}<br/><i>{s.op}</i>"]')
        for a, b in self.edges:
            lines.append(f"  {ids[a]} --> {ids[b]}")
        return "\n".join(lines) + "\n"

    def to_text(self) -> str:
        lines = []
        for s in self.steps:
            ups = s.upstream()
            lines.append(f"{s.name}  [{s.op}]" + (f"  <- {', '.join(ups)}" if ups else ""))
        return "\n".join(lines) + "\n"


def _esc(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def _topological(names: list[str], edges: list[tuple[str, str]]) -> list[str]:
    """Kahn's algorithm, always taking the earliest-declared ready step (a cycle cannot occur: a name
    is declared before it is used)."""
    rank = {n: i for i, n in enumerate(names)}
    waiting = dict.fromkeys(names, 0)
    after: dict[str, list[str]] = {}
    for a, b in edges:
        waiting[b] += 1
        after.setdefault(a, []).append(b)
    ready = [(rank[n], n) for n, count in waiting.items() if count == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        _, n = heapq.heappop(ready)
        order.append(n)
        for b in after.get(n, []):
            waiting[b] -= 1
            if waiting[b] == 0:
                heapq.heappush(ready, (rank[b], b))
    return order


def _prune_unused_data(nodes: dict[str, Step], edges: list[tuple[str, str]]) -> None:
    """Data nothing consumes is never generated: `task mazes = maze(...)` used only through
    `mazes(count = 1000)` variants would otherwise make its default set for nothing."""
    data_kinds = (registry.Kind.DATASET, registry.Kind.TASK)
    while True:
        used = {a for a, _ in edges}
        unused = {n for n, step in nodes.items()
                  if n not in used and getattr(registry.get(step.op), "output", None) in data_kinds}
        if not unused:
            return
        for n in unused:
            del nodes[n]
        edges[:] = [(a, b) for a, b in edges if b not in unused]


def build_plan(lowered: Lowered) -> Plan:
    nodes = dict(lowered.steps)
    edges = list(dict.fromkeys((up, step.name) for step in lowered.steps.values() for up in step.upstream()))
    _prune_unused_data(nodes, edges)
    rank = {n: i for i, n in enumerate(nodes)}
    edges.sort(key=lambda e: rank[e[0]])  # grouped by upstream step, as a graph's adjacency lists them
    families = {f: [n for n in names if n in nodes] for f, names in lowered.families.items()}
    plan = Plan(study=lowered.study, nodes=nodes, edges=edges, families=families, sources=lowered.sources)
    for step in plan.steps:  # topological: inputs' keys exist before they are used
        spec = registry.get(step.op)
        assert spec is not None, step.op
        step.seed = derive_seed(lowered.study.seed, step.name) if spec.uses_seed else None
        inputs = {port: ([plan.step(n).key for n in names] if isinstance(names, list) else plan.step(names).key)
                  for port, names in sorted(step.inputs.items())}
        step.key_parts = {"op": step.op, "version": spec.version, "params": step.params, "inputs": inputs,
                          "seed": step.seed}
        step.key = step_key(step.key_parts)
    return plan
