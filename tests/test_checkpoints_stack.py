"""Layer stacking (``stack``, mergekit ``slices``) on tiny generated Llama checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from mlspec.checkpoints.source import Checkpoint
from mlspec.checkpoints.synthetic import llama_config, write_llama
from mlspec.cli import main

TINY = llama_config(hidden=32, layers=4, intermediate=48, vocab=64, heads=4, dtype="float32")


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("hf")
    write_llama(root / "a", TINY, seed=0)
    write_llama(root / "b", TINY, seed=1, base_seed=0, delta=0.3)
    return root


def tensors(path: Path) -> dict[str, torch.Tensor]:
    with Checkpoint.open(path) as ck:
        return {n: ck.tensor(n) for n in ck.names}


def run(ckpts: Path, tmp_path: Path, body: str) -> tuple[int, str]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    spec = ckpts / f"{tmp_path.parent.name}-{tmp_path.name}.merge"
    spec.write_text('study "s"\nmodel a = load("a")\nmodel b = load("b")\n' + body + 'export out to "out" as hf\n')
    got = CliRunner().invoke(main, ["run", str(spec), "--out", str(tmp_path / "o"), "--cache-dir",
                                    str(tmp_path / "c"), "--no-progress"])
    return got.exit_code, got.output + got.stderr


def renumber(name: str, i: int) -> str:
    head, _, rest = name.partition(".layers.")
    return f"{head}.layers.{i}.{rest.partition('.')[2]}"


def test_passthrough_frankenmerge_copies_the_picked_blocks(ckpts: Path, tmp_path: Path) -> None:
    code, out = run(ckpts, tmp_path, 'merge out = stack(models = [a, b], slices = [\n'
                    '    layers(model = "a", start = 0, end = 3),\n    layers(model = "b", start = 1, end = 4)])\n')
    assert code == 0, out
    a, b = tensors(ckpts / "a"), tensors(ckpts / "b")
    got = tensors(tmp_path / "o" / "out")
    expected = {n: a[n] for n in a if ".layers." not in n and "embed" in n}
    expected.update({n: b[n] for n in b if ".layers." not in n and "embed" not in n})  # the last slice's
    for i in range(3):
        expected.update({renumber(n, i): t for n, t in a.items() if f".layers.{i}." in n})
    for k, src in enumerate(range(1, 4)):
        expected.update({renumber(n, 3 + k): t for n, t in b.items() if f".layers.{src}." in n})
    assert set(got) == set(expected)
    for name, tensor in expected.items():
        assert torch.equal(got[name], tensor), name
    config = json.loads((tmp_path / "o" / "out" / "config.json").read_text())
    assert config["num_hidden_layers"] == 6
    with Checkpoint.open(tmp_path / "o" / "out") as ck:
        assert ck.num_layers == 6


def test_a_merged_slice_uses_its_own_depth_gradient(ckpts: Path, tmp_path: Path) -> None:
    code, out = run(ckpts, tmp_path, 'merge out = stack(models = [a, b], method = average, slices = [\n'
                    '    layers(model = "a", start = 0, end = 1),\n'
                    '    slice(sources = [layers(model = "a", start = 1, end = 4, weights = [1, 0]),\n'
                    '                     layers(model = "b", start = 1, end = 4, weights = [0, 1])])])\n')
    assert code == 0, out
    a, b = tensors(ckpts / "a"), tensors(ckpts / "b")
    got = tensors(tmp_path / "o" / "out")
    assert len([n for n in got if n.endswith("self_attn.q_proj.weight")]) == 4
    for k in range(3):  # t = k / 2 within the slice: weights (1 - t, t), normalised
        t = k / 2
        for name in [n for n in a if f".layers.{1 + k}." in n]:
            by_hand = (1 - t) * a[name].double() + t * b[name].double()
            torch.testing.assert_close(got[renumber(name, 1 + k)].double(), by_hand, rtol=1e-6, atol=1e-6)
    q = "model.layers.0.self_attn.q_proj.weight"
    assert torch.equal(got[q], a[q])


def test_slerp_slice(ckpts: Path, tmp_path: Path) -> None:
    from mlspec.ops.merge.elementwise import slerp

    code, out = run(ckpts, tmp_path, 'merge out = stack(base = a, models = [a, b], method = slerp, t = 0.3, '
                    'slices = [slice(sources = [layers(model = "a", start = 0, end = 2), '
                    'layers(model = "b", start = 2, end = 4)])])\n')
    assert code == 0, out
    a, b = tensors(ckpts / "a"), tensors(ckpts / "b")
    got = tensors(tmp_path / "o" / "out")
    name = "model.layers.1.mlp.up_proj.weight"
    torch.testing.assert_close(got[name], slerp([a[name], b["model.layers.3.mlp.up_proj.weight"]], None, t=0.3, dot_threshold=0.9995))
    assert json.loads((tmp_path / "o" / "out" / "config.json").read_text())["num_hidden_layers"] == 2


@pytest.mark.parametrize(("slices", "message", "exit_code"), [  # 2: refused by check, 1: the step fails
    ('[layers(model = "c", start = 0, end = 2)]', "the slices name 'c', not among the models", 2),
    ('[layers(model = "a", start = 2, end = 2)]', "0 ≤ start < end", 2),
    ('[layers(model = "a", start = 0, end = 9)]', "the model has 4 blocks", 1),
    ('[slice(sources = [layers(model = "a", start = 0, end = 2), layers(model = "b", start = 0, end = 3)])]',
     "same number of blocks", 1),
])
def test_bad_slices_are_clear_errors(ckpts: Path, tmp_path: Path, slices: str, message: str, exit_code: int) -> None:
    code, out = run(ckpts, tmp_path, f"merge out = stack(models = [a, b], method = average, slices = {slices})\n")
    assert code == exit_code
    assert message in out, out
    assert "Traceback" not in out


def test_in_memory_models_are_refused() -> None:
    from mlspec.errors import StepError
    from mlspec.ops.checkpoints.loading import stack
    from mlspec.ops.checkpoints.specs import StackParams

    params = StackParams(slices=[{"type": "layers", "model": "x", "start": 0, "end": 1}])
    with pytest.raises(StepError, match="checkpoints on disk"):
        stack(None, params, models=[object()])  # type: ignore[arg-type,list-item]



def test_an_imported_mergekit_slices_config_checks_and_runs(ckpts: Path, tmp_path: Path) -> None:
    from mlspec.checkpoints.mergekit import mergekit_to_spec

    a, b = ckpts / "a", ckpts / "b"
    spec = mergekit_to_spec(
        f"merge_method: ties\nbase_model: {a}\nparameters: {{density: 1.0, weight: 1.0}}\n"
        f"slices:\n  - sources: [{{model: {a}, layer_range: [0, 2]}}]\n"
        f"  - sources:\n      - {{model: {a}, layer_range: [2, 4]}}\n"
        f"      - {{model: {b}, layer_range: [0, 2], parameters: {{weight: 0.5}}}}\n"
    )
    assert "stack(" in spec and "weights = 0.5" in spec, spec
    path = tmp_path / "imported.merge"
    path.write_text(spec)
    got = CliRunner().invoke(main, ["run", str(path), "--out", str(tmp_path / "o"), "--cache-dir",
                                    str(tmp_path / "c"), "--no-progress"])
    assert got.exit_code == 0, got.output + got.stderr
    out = tmp_path / "o" / "merged"
    merged, ta, tb = tensors(out), tensors(a), tensors(b)
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 4
    name = "model.layers.1.mlp.down_proj.weight"
    assert torch.equal(merged[name], ta[name])  # the one-source slice is copied
    # density 1, one model, mergekit's normalize: TIES is base + (0.5 · τ) / 0.5 with τ = b's block 0 − a's block 2
    base, src = ta["model.layers.2.mlp.down_proj.weight"], tb["model.layers.0.mlp.down_proj.weight"]
    by_hand = base + (0.5 * (src - base)) / 0.5
    torch.testing.assert_close(merged["model.layers.2.mlp.down_proj.weight"], by_hand)


def test_chunked_tensors_use_the_slices_parameters(ckpts: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Row chunks (large tensors) get TIES' trim threshold from the slice's density, as whole tensors do."""
    from mlspec.checkpoints import engine

    body = ('merge out = stack(base = a, models = [a, b], method = ties, trim = tensor, density = 0.9, slices = [\n'
            '    slice(sources = [layers(model = "a", start = 0, end = 4), layers(model = "b", start = 0, end = 4)],'
            ' density = 0.3)])\n')
    code, out = run(ckpts, tmp_path / "whole", body)
    assert code == 0, out
    monkeypatch.setattr(engine, "CHUNK", 64)
    code, out = run(ckpts, tmp_path / "chunked", body)
    assert code == 0, out
    whole, chunked = tensors(tmp_path / "whole" / "o" / "out"), tensors(tmp_path / "chunked" / "o" / "out")
    for n in whole:
        assert torch.equal(whole[n], chunked[n]), n
    name = "model.layers.1.mlp.up_proj.weight"
    changed = (whole[name] != tensors(ckpts / "a")[name]).float().mean().item()
    assert 0.25 < changed < 0.35  # the slice's density 0.3, not the stack's 0.9
    refused = body.replace("trim = tensor, ", "")  # trim = model ranks at the stack's density only
    code, out = run(ckpts, tmp_path / "model", refused)
    assert code == 1 and "trim = tensor" in out


def test_integer_tensors_are_copied_in_their_own_dtype(tmp_path: Path) -> None:
    """A per-block integer tensor (a causal mask, position ids) in merged slices with out_dtype set is
    copied from the slice's first source, never merged nor converted."""
    from safetensors.torch import load_file, save_file

    root = tmp_path / "hf"
    for name, seed in (("a", 0), ("b", 1)):
        write_llama(root / name, TINY, seed=seed, base_seed=0, delta=0.3)
        file = root / name / "model.safetensors"
        state = load_file(file)
        for i in range(4):
            state[f"model.layers.{i}.self_attn.mask"] = torch.arange(6, dtype=torch.int64) * (seed + 1) + i
        save_file(state, file, metadata={"format": "pt"})
    code, out = run(root, tmp_path / "run", 'merge out = stack(base = a, models = [a, b], method = slerp, t = 0.3, '
                    'out_dtype = bfloat16, slices = [slice(sources = [layers(model = "a", start = 0, end = 2), '
                    'layers(model = "b", start = 2, end = 4)])])\n')
    assert code == 0, out
    got = tensors(tmp_path / "run" / "o" / "out")
    for i in range(2):
        mask = got[f"model.layers.{i}.self_attn.mask"]
        assert mask.dtype == torch.int64 and torch.equal(mask, torch.arange(6) + i)  # a's block i
    assert got["model.layers.0.mlp.up_proj.weight"].dtype == torch.bfloat16


def test_a_stack_notes_what_it_copied_and_what_it_could_not_merge(tmp_path: Path) -> None:
    """Like a plain merge, a stack says which tensors it copied from a one-source slice and which
    merged-slice tensors it left unmerged because they are not floating point."""
    from safetensors.torch import load_file, save_file

    from mlspec.checkpoints.engine import StreamOptions
    from mlspec.ops.checkpoints.stacking import stream_stack
    from mlspec.ops.merge import method as methods

    for name, seed in (("a", 0), ("b", 1)):
        write_llama(tmp_path / name, TINY, seed=seed, base_seed=0, delta=0.3)
        file = tmp_path / name / "model.safetensors"
        state = load_file(file)
        for i in range(4):
            state[f"model.layers.{i}.self_attn.mask"] = torch.arange(6, dtype=torch.int64) + i
        save_file(state, file, metadata={"format": "pt"})
    slerp = methods.get("slerp")
    assert slerp is not None
    slices = [{"sources": [{"model": "a", "layer_range": [0, 2]}, {"model": "b", "layer_range": [0, 2]}]},
              {"sources": [{"model": "b", "layer_range": [2, 4]}]}]
    info = stream_stack(slerp, slerp.normalise({"t": 0.3}), slices, {"a": tmp_path / "a", "b": tmp_path / "b"},
                        "a", tmp_path / "out", options=StreamOptions())
    assert info["notes"]["not merged (not floating point)"] == ["model.layers.0.self_attn.mask",
                                                                "model.layers.1.self_attn.mask"]
    assert "model.layers.2.self_attn.mask" in info["notes"]["copied"]
    assert "model.layers.3.mlp.up_proj.weight" in info["notes"]["copied"]
    assert not any(".layers.0." in n for n in info["notes"]["copied"])  # slice 0 is merged
