"""Limits before work, and numbers that cannot fail silently.

Every limit of the machinery is a spec error at the spec's text (never a traceback), a sweep's
size is refused before it is expanded, and a run whose numbers leave the finite range stops with
a message instead of reporting ``null`` or chance-level results.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import mlspec
from mlspec.errors import SpecError, StepError
from mlspec.ops.data.digits import digits
from mlspec.ops.data.specs import DigitsParams
from mlspec.ops.models.specs import MLPParams, TrainParams
from mlspec.ops.models.train import mlp, train
from mlspec.run.context import StepContext


def spec_error(text: str, file: str = "s.merge", **kw: int) -> SpecError:
    with pytest.raises(SpecError) as info:
        mlspec.loads(text, file, **kw).check()
    return info.value


@pytest.mark.parametrize(("text", "message", "where"), [
    ("data d = digits(test_fraction = 1e400)\n", "the number 1e400 is out of range", "s.merge:1:33"),
    ("data d = digits(test_fraction = " + "9" * 400 + ")\n", "(400 characters) is out of range", "s.merge:1:33"),
    ("data d = digits(test_fraction = " + "9" * 5000 + ")\n", "(5000 characters) is out of range", "s.merge:1:33"),
    ("merge m[s] = average(a) for s in 0 .. 1e400\n", "1e400 is out of range", "s.merge:1:39"),
    ("merge m[s] = average(a) for s in 0 .. 1e300 step 1e-300\n", "at most 100,000", "s.merge:1:34"),
    ("model b = m[" + "1" * 310 + "]\n", "(310 characters) is out of range", "s.merge:1:13"),
    ('study "a\x00b"\n', "a NUL character", "s.merge:1:9"),
    ('study "a\ud800b"\n', "a lone surrogate (U+D800)", "s.merge:1:9"),
    ("data d = digits(test_fraction = " + "[" * 400 + "]" * 400 + ")\n", "nests deeper than 64", "s.merge:1:"),
    ("data d = digits()" + ".classes(c = 1)" * 400 + "\n", "nests deeper than 64", "s.merge:1:"),
])
def test_machine_limits_are_spec_errors(text: str, message: str, where: str) -> None:
    error = spec_error(text)
    rendered = error.render()
    assert message in rendered and f"--> {where}" in rendered
    rendered.encode("utf-8")  # printable: no lone surrogate reaches the terminal


def test_a_sweep_is_counted_before_it_is_expanded() -> None:
    text = ("model init = mlp(in = 64, hidden = [8], out = 10)\n"
            "merge m[a, b, c] = task_arithmetic(base = init, models = [init], scale = a) "
            "for a in 1 .. 1000, b in 1 .. 1000, c in 1 .. 1000\n")
    rendered = spec_error(text).render()
    assert "the sweep 'm' plans 1,000,000,000 steps (1,000 × 1,000 × 1,000)" in rendered
    assert "--> s.merge:2:1" in rendered and "--max-steps" in rendered
    small = text.replace("1 .. 1000", "1 .. 3")
    assert "plans 27 steps" in spec_error(small, max_steps=20).render()
    assert len(mlspec.loads(small, "s.merge", max_steps=30).plan.families["m"]) == 27


def test_a_grid_of_axes_is_counted_before_it_is_expanded() -> None:
    text = ('task mazes = maze(size = 5)\nmodel dt = dt_net(width = 4)\n'
            'axis size = 5 .. 1001 step 2\n'
            'evaluate [dt] on mazes(count = 2) along size x size x size\n')
    rendered = spec_error(text, "s.extrap").render()
    assert "this 'evaluate' plans 124,251,499 steps (1 × 1 × 499 × 499 × 499)" in rendered
    assert "--> s.extrap:4:1" in rendered


@pytest.mark.parametrize(("model", "message"), [
    ("mlp(in = 64, hidden = [32, 0], out = 10)", "invalid 'hidden' for mlp: Input should be greater than or equal to 1"),
    ("mlp(in = 1e9, out = 10)", "invalid 'in' for mlp: Input should be less than or equal to 1000000"),
    ("mlp(in = 100000, hidden = [100000], out = 10)", "would have 10,001,100,010 weights"),
])
def test_parameters_that_make_no_working_model_are_refused_at_check_time(model: str, message: str) -> None:
    assert message in spec_error(f"model m = {model}\n").render()


def ctx(tmp_path: Path) -> StepContext:
    return StepContext(name="t", key="k", seed=0, device="cpu", out_dir=tmp_path, work_dir=tmp_path / "w")


@pytest.mark.parametrize(("params", "message"), [
    (TrainParams(epochs=2, lr=1e6), "training diverged in epoch 1: the loss grew from 2.3"),
    (TrainParams(epochs=1, lr=1e300, optimizer="sgd"), "training diverged in epoch 1: an update overflowed"),
])
def test_divergence_is_found_from_the_loss_trajectory_and_overflow(params: TrainParams, message: str,
                                                                   tmp_path: Path) -> None:
    data = digits(ctx(tmp_path), DigitsParams())
    init = mlp(ctx(tmp_path), MLPParams.model_validate({"in": 64, "hidden": [8], "out": 10}))
    with pytest.raises(StepError, match=message + ".*lower the learning rate"):
        train(ctx(tmp_path), params, model=init, on=data)


def test_a_result_that_is_not_finite_is_a_step_error(tmp_path: Path) -> None:
    spec = tmp_path / "s.merge"
    spec.write_text("data digits = digits()\nmodel init = mlp(in = 64, hidden = [8], out = 10)\n"
                    "model other = mlp(in = 64, hidden = [8], out = 10)\n"
                    "merge huge = task_arithmetic(base = init, models = [other], scale = 1e308)\n"
                    "merge fine = average(init, other)\nevaluate [huge, fine] on [digits]\n")
    results = mlspec.load(spec).run(out=tmp_path / "o", cache_dir=tmp_path / "c", report=False)
    failures = results.failures()
    assert set(failures) == {"huge", "evaluate huge on digits"}
    assert failures["huge"].startswith("the result is not finite: weight 'layers.") and "NaN or infinite" in failures["huge"]
    assert 0 <= results["evaluate fine on digits"]["accuracy"] <= 1
