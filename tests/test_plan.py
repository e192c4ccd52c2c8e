"""Planning: sweep expansion, content keys, derived seeds, and what a change re-runs."""

from __future__ import annotations

import pytest

import mlspec
from mlspec.errors import SpecError
from mlspec.plan.graph import derive_seed

SPEC = """\
study "p" (seed = 3)
data digits = digits()
data low = digits.classes(0 .. 4)
model init = mlp(in = 64, hidden = [16], out = 10)
model a = train(init, on = low, epochs = 2)
model b = train(init, on = digits, epochs = 2)
merge ta[s] = task_arithmetic(base = init, models = [a, b], scale = s) for s in 0.5 .. 1.5 step 0.5
evaluate [a, ta] on [low, digits]
curve ab = interpolate(a, b, steps = 3) on digits
"""


def plan_of(text: str):
    return mlspec.loads(text, "p.merge").plan


def test_sweeps_expand_into_named_steps() -> None:
    plan = plan_of(SPEC)
    assert plan.families["ta"] == ["ta[0.5]", "ta[1.0]", "ta[1.5]"]
    assert [plan.step(n).params["scale"] for n in plan.families["ta"]] == [0.5, 1.0, 1.5]
    assert plan.step("ta[1.0]").sweep == {"s": 1.0}
    evals = [s.name for s in plan.steps if s.op == "evaluate"]
    assert len(evals) == 4 * 2 and "evaluate ta[1.5] on digits" in evals


def test_method_call_and_range_become_parameters() -> None:
    plan = plan_of(SPEC)
    low = plan.step("low")
    assert low.op == "classes" and low.params["classes"] == [0, 1, 2, 3, 4] and low.inputs == {"data": "digits"}


def test_graph_edges_follow_inputs() -> None:
    plan = plan_of(SPEC)
    assert set(plan.graph.predecessors("ab")) == {"a", "b", "digits"}
    assert plan.downstream("a") >= {"ta[0.5]", "ab", "evaluate a on low"}
    order = [s.name for s in plan.steps]
    assert order.index("init") < order.index("a") < order.index("ta[0.5]")


def test_keys_are_stable_and_change_only_downstream() -> None:
    before = {s.name: s.key for s in plan_of(SPEC).steps}
    assert before == {s.name: s.key for s in plan_of(SPEC).steps}
    after = {s.name: s.key for s in plan_of(SPEC.replace("model b = train(init, on = digits, epochs = 2)",
                                                         "model b = train(init, on = digits, epochs = 3)")).steps}
    changed = {n for n in before if before[n] != after[n]}
    assert changed == {"b", "ta[0.5]", "ta[1.0]", "ta[1.5]", "ab",
                       *(f"evaluate ta[{s}] on {d}" for s in ("0.5", "1.0", "1.5") for d in ("low", "digits"))}


def test_seeds_derive_from_study_seed_and_name() -> None:
    plan = plan_of(SPEC)
    assert plan.step("a").seed == derive_seed(3, "a") and plan.step("a").seed != plan.step("b").seed
    assert plan.step("ta[0.5]").seed is None  # deterministic operators keep seeds out of their keys
    # Adding a step changes no other step's key.
    more = plan_of(SPEC + "model extra = train(init, on = low, epochs = 1)\n")
    assert all(more.step(s.name).key == s.key for s in plan.steps)


def test_identical_calls_share_a_cache_key() -> None:
    plan = plan_of(SPEC + "merge t1 = task_arithmetic(base = init, models = [a, b], scale = 1.0)\n")
    assert plan.step("t1").key == plan.step("ta[1.0]").key


def test_graph_formats() -> None:
    plan = plan_of(SPEC)
    assert plan.to_dot().startswith("digraph") and '"init" -> "a"' in plan.to_dot()
    mermaid = plan.to_mermaid()
    assert mermaid.startswith("graph LR") and mermaid.count("-->") == plan.graph.number_of_edges()
    assert "ab  [interpolate]  <- a, b, digits" in plan.to_text()


def test_data_nothing_uses_is_not_planned() -> None:
    plan = plan_of(SPEC + "data unused = digits.classes(7)\n")
    assert "unused" not in plan.graph and "low" in plan.graph
    only_variant = plan_of('data d = digits(test_fraction = 0.5)\nmodel m = mlp(in = 64, hidden = [4], out = 10)\n'
                           'model t = train(m, on = d(test_fraction = 0.25))\n')
    assert "d" not in only_variant.graph and "d(test_fraction = 0.25)" in only_variant.graph


def test_reused_declarations_inside_sweeps_get_one_step_per_value() -> None:
    plan = plan_of('data d = digits(test_fraction = 0.5)\nmodel m = mlp(in = 64, hidden = [4], out = 10)\n'
                   'model t[f] = train(m, on = d(test_fraction = f)) for f in [0.2, 0.3]\n')
    assert {"d(test_fraction = 0.2)", "d(test_fraction = 0.3)"} <= set(plan.graph)
    assert plan.step("t[0.3]").inputs["on"] == "d(test_fraction = 0.3)"


def test_use_shares_declarations_between_specs(tmp_path) -> None:
    (tmp_path / "common.merge").write_text('data digits = digits()\nmodel init = mlp(in = 64, hidden = [8], out = 10)\n'
                                           'report "ignored.html"\n')
    (tmp_path / "study.merge").write_text('use "common.merge"\nmodel a = train(init, on = digits, epochs = 1)\n')
    plan = mlspec.load(tmp_path / "study.merge").plan
    assert {"digits", "init", "a"} <= set(plan.graph)
    (tmp_path / "loop.merge").write_text('use "loop2.merge"\n')
    (tmp_path / "loop2.merge").write_text('use "loop.merge"\n')
    with pytest.raises(SpecError) as cycle:
        mlspec.load(tmp_path / "loop.merge").check()
    assert "a `use` cycle" in cycle.value.render() and "loop2.merge:1:1" in cycle.value.render()
    (tmp_path / "missing.merge").write_text('use "nowhere.merge"\n')
    with pytest.raises(SpecError, match="cannot use 'nowhere.merge': no such file"):
        mlspec.load(tmp_path / "missing.merge").check()


def test_sweep_members_can_be_picked_and_aliased() -> None:
    plan = plan_of(SPEC + "model best = ta[1.0]\ncurve c = interpolate(a, ta[1.5], steps = 3) on digits\n"
                          "evaluate [best] on [digits]\n")
    assert plan.step("c").inputs["b"] == "ta[1.5]"
    assert plan.step("evaluate ta[1.0] on digits").inputs["model"] == "ta[1.0]"


def test_grid_points_replace_settings_the_data_call_already_has() -> None:
    spec = ('task mazes = maze(size = 5)\nmodel dt = dt_net(width = 4)\naxis size = [5, 7]\n'
            'evaluate [dt] on mazes(size = 9, count = 8) along size iterations [1, 2]\n')
    plan = mlspec.loads(spec, "g.extrap").plan
    data = sorted(s.name for s in plan.steps if s.op == "maze")
    assert data == ["mazes(size = 5, count = 8)", "mazes(size = 7, count = 8)"]
    assert plan.step("mazes(size = 7, count = 8)").params["size"] == 7
