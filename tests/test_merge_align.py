"""Neuron alignment, REPAIR, ZipIt! and ensembles: function-preservation laws and recovery tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mlspec.errors import StepError
from mlspec.ops.merge import align as A
from mlspec.ops.merge import specs as S
from mlspec.ops.merge.networks import ensemble, mean_of_softmax
from mlspec.ops.merge.permspec import permute_state, spec_for
from mlspec.ops.merge.zipit import zip_models
from mlspec.ops.models.builders import build, build_module
from mlspec.registry import NoParams
from mlspec.run.context import StepContext
from mlspec.values import Dataset, Model

ARCHS = [
    {"type": "mlp", "in_features": 64, "hidden": [12, 10], "out_features": 5, "norm": norm}
    for norm in ("none", "layernorm", "batchnorm")
] + [{"type": "resnet", "side": 8, "width": 6, "blocks": 2, "out_features": 5, "norm": n} for n in ("batchnorm", "layernorm")]


def ctx() -> StepContext:
    return StepContext(name="m", key="k", seed=0, device="cpu", out_dir=Path("/tmp"), work_dir=Path("/tmp"))


def model(arch: dict, seed: int) -> Model:
    torch.manual_seed(seed)
    net = build(arch)
    with torch.no_grad():  # non-trivial normalisation statistics and affines
        for name, t in net.state_dict().items():
            if not t.is_floating_point() or not ("norm" in name or "stem.1" in name):
                continue
            if "running_var" in name:
                t.uniform_(0.5, 2.0)
            elif "bias" in name or "mean" in name:
                t.normal_(0.0, 0.5)
            else:
                t.uniform_(0.5, 1.5)
    return Model(arch=dict(arch), state={k: v.clone() for k, v in net.state_dict().items()})


def data(n: int = 64) -> Dataset:
    x = torch.rand(n, 64, generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 5, (n,), generator=torch.Generator().manual_seed(2))
    return Dataset({"x_train": x, "y_train": y, "x_test": x, "y_test": y})


def random_perms(m: Model, seed: int) -> dict[str, torch.Tensor]:
    spec = spec_for(m.arch, m.state)
    g = torch.Generator().manual_seed(seed)
    return {grp: torch.randperm(m.state[ms[0][0]].shape[ms[0][1]], generator=g) for grp, ms in spec.groups.items()}


def outputs(m: Model, x: torch.Tensor) -> torch.Tensor:
    return build_module(m).eval()(x)


@settings(max_examples=10, deadline=None)
@given(st.sampled_from(range(len(ARCHS))), st.integers(0, 1000))
def test_permuting_never_changes_outputs(which: int, seed: int) -> None:
    m = model(ARCHS[which], seed)
    spec = spec_for(m.arch, m.state)
    permuted = m.with_state(permute_state(spec, m.state, random_perms(m, seed)))
    x = data().split("train")[0]
    assert torch.allclose(outputs(m, x), outputs(permuted, x), atol=1e-5)
    assert any(not torch.equal(m.state[k], permuted.state[k]) for k in m.state)


@pytest.mark.parametrize("arch", [ARCHS[0], ARCHS[3]], ids=["mlp", "resnet"])
@pytest.mark.parametrize("by", ["weight_matching", "activation_matching"])
def test_matching_recovers_a_hidden_permutation(arch: dict, by: str) -> None:
    a = model(arch, 0)
    shuffled = a.with_state(permute_state(spec_for(a.arch, a.state), a.state, random_perms(a, 5)))
    aligned = A.permute(ctx(), S.PermuteParams(by=by), model=shuffled, to=a, on=data())
    for k in a.state:
        assert torch.allclose(aligned.state[k], a.state[k]), k
    info = aligned.info["alignment"]
    assert info["distance_after"] < 1e-6 < info["distance_before"]


def test_weight_matching_reduces_distance_between_independent_models() -> None:
    a, b = model(ARCHS[0], 0), model(ARCHS[0], 1)
    aligned = A.permute(ctx(), S.PermuteParams(), model=b, to=a)
    assert aligned.info["alignment"]["distance_after"] < aligned.info["alignment"]["distance_before"]
    x = data().split("train")[0]
    assert torch.allclose(outputs(aligned, x), outputs(b, x), atol=1e-5)


def test_activation_matching_needs_data() -> None:
    with pytest.raises(StepError, match="needs data"):
        A.permute(ctx(), S.PermuteParams(by="activation_matching"), model=model(ARCHS[0], 1), to=model(ARCHS[0], 0))


def test_unsupported_architecture_is_a_clear_error() -> None:
    ens = ensemble(ctx(), NoParams(), models=[model(ARCHS[0], 0)])
    with pytest.raises(StepError, match="no permutation spec for architecture 'ensemble'"):
        A.permute(ctx(), S.PermuteParams(), model=ens, to=ens)


@pytest.mark.parametrize("arch", [ARCHS[0], ARCHS[2], ARCHS[4]], ids=["mlp", "mlp-bn", "resnet-ln"])
def test_repair_sets_interpolated_channel_statistics(arch: dict) -> None:
    a, b = model(arch, 0), model(arch, 1)
    mid = a.with_state({k: (a.state[k] + b.state[k]) / 2 if a.state[k].is_floating_point() else a.state[k]
                        for k in a.state})
    fixed = A.repair(ctx(), S.RepairParams(alpha=0.25, samples=64), model=mid, a=a, b=b, on=data())
    x = data().split("train")[0]
    spec = spec_for(a.arch, a.state)
    first = next(iter(spec.affines))
    (ma, sa), (mb, sb) = (A.channel_stats(build_module(m), x, [first])[first] for m in (a, b))
    mu, sd = A.channel_stats(build_module(fixed), x, [first])[first]
    assert torch.allclose(mu, 0.75 * ma + 0.25 * mb, atol=1e-4)
    assert torch.allclose(sd, 0.75 * sa + 0.25 * sb, atol=1e-4)


@pytest.mark.parametrize("layers", [None, 1])
def test_zipping_a_model_with_itself_is_the_model(layers: int | None) -> None:
    a = model(ARCHS[0], 0)
    zipped = zip_models(ctx(), S.ZipParams(layers=layers, samples=64), a=a, b=a, on=data())
    x = data().split("train")[0]
    assert torch.allclose(torch.log_softmax(outputs(zipped, x), -1), torch.log_softmax(outputs(a, x), -1), atol=1e-5)
    assert zipped.arch["trunk"] == ([12, 10] if layers is None else [12])


def test_zip_rejects_normalised_mlps() -> None:
    b = model(ARCHS[1], 0)
    with pytest.raises(StepError, match="without normalisation"):
        zip_models(ctx(), S.ZipParams(), a=b, b=b, on=data())


def test_ensemble_averages_member_probabilities() -> None:
    a, b = model(ARCHS[0], 0), model(ARCHS[0], 1)
    ens = ensemble(ctx(), NoParams(), models=[a, b])
    x = data().split("train")[0]
    expected = torch.log((torch.softmax(outputs(a, x), -1) + torch.softmax(outputs(b, x), -1)) / 2)
    assert torch.allclose(outputs(ens, x), expected, atol=1e-6)
    assert torch.allclose(mean_of_softmax([outputs(a, x)]), torch.log_softmax(outputs(a, x), -1))
