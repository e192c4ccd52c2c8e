"""Figures that answer a study's question at a glance, placed first in the report ("Answer").

Each reads the whole study (records *and* the execution graph), so it works for any spec with
the same shape, whatever its names:

- **Interference** — merged models scored on tasks that carry a head (``with_head``): normalised
  accuracy (merged / the fine-tune whose head the task carries) against the number of models in
  the merge, one line per merge family; beside it, the task vectors' sign-conflict rate and mean
  cosine against the number of models.
- **Backdoor** — merged models scored on a ``poison``ed dataset: attack success and clean accuracy
  against the merge's first sweep variable (one line per family and per value of any other sweep
  variable), with each unmerged model as a horizontal reference.
- **Distribution shift** — ``evaluate_extrap`` records along axes other than size: accuracy at the
  largest budget against each axis, one line per model and size (``exact`` dashed beside
  ``valid_path``); and the shares of dynamics runs ending in a fixed point, a 2-cycle, a longer
  cycle or neither, per model.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

from .bundle import StepView, StudyView, fmt, number
from .figures import Figure, new_figure, study_figure, style

__all__ = ["backdoor_figure", "interference_figure", "limit_shares_figure", "normalised_accuracy",
           "shift_figure"]

SECTION = "Answer"
LIMITS = (("fixed_point", "fixed point"), ("cycle_2", "2-cycle"), ("cycle_longer", "longer cycle"),
          ("none", "neither"))


def _members(step: StepView | None) -> list[str]:
    models = (step.inputs.get("models") if step else None) or []
    return [str(m) for m in models] if isinstance(models, list) else [str(models)]


def _group(step: StepView) -> str:
    return step.family or step.name


def normalised_accuracy(study: StudyView) -> dict[str, dict[int, dict[str, Any]]]:
    """``{family: {n_models: {"mean": ..., "tasks": {task: ratio}}}}`` for every merge scored on a
    task whose head comes from one of the merge's own models."""
    acc: dict[tuple[str, str], float] = {}
    for s in study.by_op("evaluate"):
        value = number(s.record.get("accuracy")) if isinstance(s.record, dict) else None
        if value is not None:
            acc[(str(s.inputs.get("model")), str(s.inputs.get("on")))] = value
    out: dict[str, dict[int, dict[str, Any]]] = defaultdict(dict)
    for (model, data), value in acc.items():
        task = study.step(data)
        merge = study.step(model)
        if task is None or task.op != "with_head" or merge is None:
            continue
        head, members = str(task.inputs.get("model")), _members(merge)
        reference = acc.get((head, data))
        if head not in members or not reference:
            continue
        point = out[_group(merge)].setdefault(len(members), {"tasks": {}})
        point["tasks"][data] = value / reference
    for points in out.values():
        for point in points.values():
            point["mean"] = float(np.mean(list(point["tasks"].values())))
    return dict(out)


def _vectors_by_count(study: StudyView) -> dict[int, dict[str, float]]:
    out = {}
    for s in study.by_op("task_vectors"):
        rec = s.record if isinstance(s.record, dict) else {}
        cos = np.asarray(rec.get("cosine") or [], dtype=float)
        n = len(cos)
        if n < 2 or number(rec.get("sign_conflict_all")) is None:
            continue
        out[n] = {"sign_conflict": float(rec["sign_conflict_all"]),
                  "mean_cosine": float(cos[~np.eye(n, dtype=bool)].mean())}
    return dict(sorted(out.items()))


@study_figure
def interference_figure(study: StudyView) -> list[Figure]:
    scores = normalised_accuracy(study)
    if not scores:
        return []
    vectors = _vectors_by_count(study)
    fig = new_figure(10.0 if vectors else 6.0, 3.8, ncols=2 if vectors else 1)
    ax = fig.axes[0]
    sentences = []
    for i, (family, points) in enumerate(scores.items()):
        ns = sorted(points)
        ax.plot(ns, [points[n]["mean"] for n in ns], label=family, **style(i))
        sentences.append(f"{family} {fmt(points[ns[0]]['mean'], 3)} at N = {ns[0]} → "
                         f"{fmt(points[ns[-1]]['mean'], 3)} at N = {ns[-1]}")
    ax.axhline(1.0, color="#777777", linewidth=0.8)
    ax.set_xlabel("tasks merged (N)")
    ax.set_ylabel("normalised accuracy (merged / fine-tuned)")
    ax.set_title("accuracy kept by the merge, each task with its own head")
    ax.legend(fontsize=7)
    if vectors:
        ns = list(vectors)
        right = fig.axes[1]
        right.plot(ns, [vectors[n]["sign_conflict"] for n in ns], label="sign-conflict rate", **style(0))
        right.plot(ns, [vectors[n]["mean_cosine"] for n in ns], label="mean cosine", **style(1))
        right.set_xlabel("task vectors (N)")
        right.set_title("task-vector geometry")
        right.legend(fontsize=7)
        sentences.append(f"sign-conflict rate {fmt(vectors[ns[0]]['sign_conflict'], 3)} at N = {ns[0]} → "
                         f"{fmt(vectors[ns[-1]]['sign_conflict'], 3)} at N = {ns[-1]}")
    return [Figure(slug="answer-interference", title="Interference: normalised accuracy against the number of tasks",
                   mpl=fig, section=SECTION, data={"normalised_accuracy": scores, "task_vectors": vectors},
                   alt="Normalised accuracy (merged over fine-tuned, mean over the merged tasks) against the "
                       "number of tasks merged: " + "; ".join(sentences) + ".",
                   caption="Each merged body is scored on every task it contains with that task's own head "
                           "and divided by the fine-tune's accuracy there; 1 means nothing was lost.")]


def _backdoor_rows(study: StudyView) -> list[dict[str, Any]]:
    rows = []
    for s in study.by_op("evaluate"):
        rec = s.record if isinstance(s.record, dict) else {}
        asr = number(rec.get("attack_success"))
        model = study.step(str(s.inputs.get("model")))
        if asr is None or model is None:
            continue
        rows.append({"model": model.name, "family": _group(model), "sweep": model.sweep or {},
                     "merge": bool(_members(model)), "attack_success": asr,
                     "accuracy": number(rec.get("accuracy"))})
    return rows


def _integer_ticks(ax: Any, xs: list[Any]) -> None:
    if all(isinstance(x, int) and not isinstance(x, bool) for x in xs):
        from matplotlib.ticker import MaxNLocator  # drawing only: a warm run imports no matplotlib

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


@study_figure
def backdoor_figure(study: StudyView) -> list[Figure]:
    rows = _backdoor_rows(study)
    merged = [r for r in rows if r["merge"] and r["sweep"]]
    if not merged:
        return []
    xname = next(iter(merged[0]["sweep"]))
    # one-variable sweeps on the left; a family swept over more (a merge weight) gets its own column
    plain: dict[str, list[dict[str, Any]]] = defaultdict(list)
    weighted: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in merged:
        keys = list(r["sweep"])
        rest = ", ".join(f"{k} = {fmt(r['sweep'][k], 3)}" for k in keys[1:])
        (weighted if rest else plain)[r["family"] + (f" ({rest})" if rest else "")].append(r)
    columns = [c for c in (plain, weighted) if c]
    fig = new_figure(5.2 * len(columns), 6.4, ncols=len(columns), nrows=2)
    alone = [r for r in rows if not r["sweep"]]
    sentences = []
    for col, series in enumerate(columns):
        top, bottom = fig.axes[col], fig.axes[len(columns) + col]
        for i, (label, points) in enumerate(series.items()):
            points.sort(key=lambda r: r["sweep"][xname])
            xs = [r["sweep"][xname] for r in points]
            for ax, metric in ((top, "attack_success"), (bottom, "accuracy")):
                ax.plot(xs, [r[metric] for r in points], label=label, **style(i))
                _integer_ticks(ax, xs)
            sentences.append(f"{label}: attack success {fmt(points[0]['attack_success'], 3)} at {xname} = "
                             f"{fmt(xs[0], 3)}, {fmt(points[-1]['attack_success'], 3)} at {xname} = {fmt(xs[-1], 3)}")
        for j, r in enumerate(alone):
            for ax, metric in ((top, "attack_success"), (bottom, "accuracy")):
                if r[metric] is not None:
                    ax.axhline(r[metric], color="#555555", linestyle=(":", "--", "-.")[j % 3], linewidth=1.0,
                               label=f"{r['model']} alone")
        for ax, what in ((top, "attack success (triggered → target)"), (bottom, "clean accuracy")):
            ax.set_xlabel(xname)
            ax.set_ylabel(what)
            ax.set_ylim(-0.02, 1.02)
        top.set_title("does the backdoor survive the merge?" if col == 0 else "… against the merge weight")
        bottom.legend(fontsize=6, loc="lower left", ncols=2)
    sentences += [f"{r['model']} alone: attack success {fmt(r['attack_success'], 3)}" for r in alone]
    return [Figure(slug="answer-backdoor", title="Backdoor: attack success and clean accuracy of each merge",
                   mpl=fig, section=SECTION, data={"rows": rows},
                   alt="Attack success and clean accuracy against " + xname + ": " + "; ".join(sentences) + ".",
                   caption="Attack success: the share of triggered test inputs of other classes that the model "
                           "sends to the backdoor's target. Horizontal lines: models that were not merged.")]


def _shift_points(study: StudyView) -> tuple[list[str], list[dict[str, Any]]]:
    points, axes = [], []
    for s in study.by_op("evaluate_extrap"):
        rec = s.record if isinstance(s.record, dict) else {}
        acc = rec.get("accuracy")
        if not s.sweep or not isinstance(acc, list) or not acc:
            continue
        axes += [a for a in s.sweep if a not in axes]
        exact = rec.get("exact_accuracy")
        points.append({"model": str(s.inputs.get("model") or rec.get("model")), "at": dict(s.sweep),
                       "budget": rec.get("iterations", [None])[-1], "accuracy": number(acc[-1]),
                       "exact": number(exact[-1]) if isinstance(exact, list) and exact else None,
                       "by_budget": dict(zip(rec.get("iterations") or [], acc))})
    return axes, points


@study_figure
def shift_figure(study: StudyView) -> list[Figure]:
    axes, points = _shift_points(study)
    shifts = [a for a in axes if a != "size"]
    if not shifts:
        return []
    fig = new_figure(5.0 * len(shifts), 3.8, ncols=len(shifts))
    sentences = []
    for ax, axis in zip(fig.axes, shifts):
        lines: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for p in points:
            if axis in p["at"]:
                others = ", ".join(f"{k} {fmt(v, 3)}" for k, v in p["at"].items() if k != axis)
                lines[p["model"] + (f" ({others})" if others else "")].append(p)
        for i, (label, pts) in enumerate(lines.items()):
            pts.sort(key=lambda p: float(p["at"][axis]))
            xs = list(range(len(pts))) if isinstance(pts[0]["at"][axis], bool) else [p["at"][axis] for p in pts]
            ax.plot(xs, [p["accuracy"] for p in pts], label=label, **style(i))
            if any(p["exact"] is not None for p in pts):
                ax.plot(xs, [p["exact"] for p in pts], color=style(i)["color"], linestyle=":", linewidth=0.9)
            sentences.append(f"{label} along {axis}: " + ", ".join(
                f"{fmt(p['at'][axis], 3)} → {fmt(p['accuracy'], 3)}" for p in pts))
        if isinstance(next(iter(lines.values()))[0]["at"][axis], bool):
            ax.set_xticks([0, 1], ["false", "true"])
        ax.set_xlabel(axis.replace("_", " "))
        ax.set_ylabel("solved share at the largest budget")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"along {axis.replace('_', ' ')}")
        ax.legend(fontsize=6)
    return [Figure(slug="answer-shift", title="Where extrapolation breaks: accuracy along each shift",
                   mpl=fig, section=SECTION, data={"points": points},
                   alt="Solved share at the largest iteration budget: " + "; ".join(sentences) + ".",
                   caption="Solid: the evaluation's correctness (valid_path accepts any minimal path); dotted: "
                           "exact match with the generator's path, where both were scored.")]


def limit_shares(study: StudyView) -> dict[str, dict[str, float]]:
    out = {}
    for s in study.by_op("dynamics"):
        rec = s.record if isinstance(s.record, dict) else {}
        counts = (rec.get("limit") or {}).get("counts") if isinstance(rec.get("limit"), dict) else None
        if not isinstance(counts, dict):
            continue
        total = sum(v for v in counts.values() if isinstance(v, int)) or 1
        out[str(s.inputs.get("model") or rec.get("model") or s.name)] = {
            k: counts.get(k, 0) / total for k, _ in LIMITS}
    return out


@study_figure
def limit_shares_figure(study: StudyView) -> list[Figure]:
    shares = limit_shares(study)
    if not shares or not any(k in v for v in shares.values() for k, _ in LIMITS):
        return []
    fig = new_figure(6.0, 0.8 + 0.6 * len(shares))
    ax = fig.axes[0]
    models = list(shares)
    left = np.zeros(len(models))
    for i, (key, label) in enumerate(LIMITS):
        width = np.array([shares[m][key] for m in models])
        ax.barh(models, width, left=left, label=label, color=style(i)["color"],
                hatch=("", "//", "..", "xx")[i], edgecolor="white")
        left += width
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of runs")
    ax.legend(fontsize=7, ncols=4, loc="upper center", bbox_to_anchor=(0.5, -0.35 if len(models) < 3 else -0.2))
    return [Figure(slug="answer-limits", title="How the iterations end: fixed point, 2-cycle, longer cycle or neither",
                   mpl=fig, section=SECTION, data={"shares": shares},
                   alt="Share of free-running runs per limit: " + "; ".join(
                       f"{m}: " + ", ".join(f"{label} {fmt(shares[m][k], 3)}" for k, label in LIMITS)
                       for m in models) + ".")]
