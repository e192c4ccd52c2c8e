"""``mlspec import mergekit``: every mergekit 0.1.5 method, its defaults and parameter lookup, chained
documents, dtype, tokenizer settings, and clear refusals of what mergekit itself rejects."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny_checkpoints import in_memory, tiny_family

import mlspec
from mlspec.checkpoints.mergekit import MergekitImportError, mergekit_to_spec, read_config
from mlspec.checkpoints.mergekit_methods import METHODS
from mlspec.ops.merge.apply import merge
from mlspec.run.context import StepContext
from mlspec.syntax.parser import parse


def one(yaml_text: str):  # type: ignore[no-untyped-def]
    (merge,) = read_config(yaml_text)
    return merge


TWO = "models: [{model: a, parameters: {weight: 0.6}}, {model: b, parameters: {weight: 0.4}}]\n"


@pytest.mark.parametrize(
    "method, op, expected",
    [
        ("ties", "ties", dict(density=[1.0, 1.0], normalize=True, scale=1.0, rescale="none", trim="tensor",
                              elect="mass", weights_at="before")),
        ("dare_ties", "dare", dict(density=[1.0, 1.0], normalize=False, rescale="l1", merge="ties", weights_at="before")),
        ("dare_linear", "dare", dict(rescale="l1", merge="task_arithmetic")),
        ("breadcrumbs", "breadcrumbs", dict(gamma=[0.01, 0.01], rescale="none", merge="task_arithmetic")),
        ("breadcrumbs_ties", "breadcrumbs", dict(merge="ties", normalize=False)),
        ("della", "della", dict(density=[1.0, 1.0], epsilon=[0.15, 0.15], normalize=True, rescale="l1",
                                weights_at="before", scale=1.0)),
        ("della_linear", "della_linear", dict(epsilon=[0.15, 0.15], normalize=False, rescale="l1")),
        ("multislerp", "multislerp", dict(normalize_weights=True, eps=1e-8)),
        ("nuslerp", "nuslerp", dict(row_wise=False, flatten=True)),
    ],
)
def test_methods_with_weights_keep_mergekit_defaults(method: str, op: str, expected: dict) -> None:  # type: ignore[type-arg]
    merge = one(f"merge_method: {method}\nbase_model: base\n{TWO}")
    assert merge.op == op and merge.base == "base" and merge.models == ["a", "b"]
    assert merge.params["weights"] == [0.6, 0.4]
    assert {k: merge.params[k] for k in expected} == expected
    if method == "della_linear":
        assert "weights_at" not in merge.params


@pytest.mark.parametrize(
    "yaml_text, op, params",
    [
        ("merge_method: sce\nbase_model: base\n" + TWO + "parameters: {select_topk: 0.3, int8_mask: true}",
         "sce", {"select_topk": 0.3, "uniform_below": 1e-6}),
        ("merge_method: nearswap\nbase_model: base\nmodels: [{model: a}]\nparameters: {t: 0.001}",
         "nearswap", {"t": 0.001}),
        ("merge_method: arcee_fusion\nbase_model: a\nmodels: [{model: a}, {model: b}]", "arcee_fusion", {}),
        ("merge_method: ram\nbase_model: base\n" + TWO, "ram", {"epsilon": 1e-5}),
        ("merge_method: ramplus_tl\nbase_model: base\n" + TWO + "parameters: {r: 0.3}",
         "ramplus_tl", {"r": 0.3, "alpha": 0.2, "epsilon": 1e-5}),
        ("merge_method: model_stock\nbase_model: base\n" + TWO, "model_stock", {"mean": "cosine"}),
    ],
)
def test_methods_with_global_parameters(yaml_text: str, op: str, params: dict) -> None:  # type: ignore[type-arg]
    merge = one(yaml_text)
    assert merge.op == op
    assert {k: v for k, v in merge.params.items() if k not in ("dtype", "out_dtype")} == params
    assert merge.base is not None and merge.base not in merge.models


def test_linear_karcher_and_passthrough_take_the_base_as_one_more_input() -> None:
    linear = one("merge_method: linear\nbase_model: c\n" + TWO + "parameters: {weight: 0.2}")
    assert (linear.op, linear.base, linear.models, linear.params["weights"]) == ("average", None, ["a", "b", "c"], [0.6, 0.4, 0.2])
    karcher = one("merge_method: karcher\nbase_model: c\nmodels: [{model: a}, {model: b}]")
    assert (karcher.op, karcher.models, karcher.params) == ("spherical_mean", ["a", "b", "c"], {"max_iter": 10.0})
    passthrough = one("merge_method: passthrough\nmodels: [{model: a, parameters: {scale: 0.5}}]")
    assert (passthrough.op, passthrough.models, passthrough.params) == ("passthrough", ["a"], {"scale": [0.5]})
    with pytest.raises(MergekitImportError, match="linear needs 'weight' for every model; 'c' has none"):
        read_config("merge_method: linear\nbase_model: c\n" + TWO)


def test_slerp_puts_the_base_first_and_needs_t() -> None:
    merge = one("merge_method: slerp\nbase_model: b\nmodels: [{model: a}]\nparameters: {t: [0, 1]}")
    assert (merge.base, merge.models, merge.params) == (None, ["b", "a"], {"t": [0.0, 1.0]})
    with pytest.raises(MergekitImportError, match="slerp needs the parameter 't'"):
        read_config("merge_method: slerp\nbase_model: b\nmodels: [{model: a}]")


def test_task_arithmetic_folds_lambda_and_normalize_into_scales() -> None:
    merge = one("merge_method: task_arithmetic\nbase_model: base\n" + TWO + "parameters: {normalize: true, lambda: 0.5}")
    assert merge.params == {"scale": [0.3, 0.2]}
    assert one("merge_method: task_arithmetic\nbase_model: base\n" + TWO).params == {"scale": [0.6, 0.4]}


def test_rescale_is_carried_for_ties_and_breadcrumbs() -> None:
    for method in ("ties", "breadcrumbs", "breadcrumbs_ties"):
        merge = one(f"merge_method: {method}\nbase_model: base\n{TWO}parameters: {{rescale: true, lambda: 0.7}}")
        assert merge.params["rescale"] == "l1" and merge.params["scale"] == 0.7
    dare = one(f"merge_method: dare_linear\nbase_model: base\n{TWO}parameters: {{rescale: false}}")
    assert dare.params["rescale"] == "none"


def test_per_model_parameters_fall_back_to_the_global_value_and_then_the_default() -> None:
    merge = one(
        """
merge_method: ties
base_model: base
models:
  - model: a
    parameters:
      weight: [{filter: mlp, value: 0.5}, {filter: self_attn, value: 0.2}]
      density: [{filter: mlp, value: 0.3}]
  - model: b
    parameters: {density: [1, 0.5]}
parameters:
  weight: 0.8
"""
    )
    assert merge.params["weights"] == [
        [{"filter": "mlp", "value": 0.5}, {"filter": "self_attn", "value": 0.2}, {"filter": None, "value": 0.8}],
        0.8,
    ]
    # no global density: the rule list falls back to mergekit's default 1.0; b's gradient stays per model
    assert merge.params["density"] == [[{"filter": "mlp", "value": 0.3}, {"filter": None, "value": 1.0}], [1.0, 0.5]]


def test_global_rule_lists_continue_a_model_rule_list() -> None:
    merge = one(
        "merge_method: dare_ties\nbase_model: base\nmodels:\n"
        "  - {model: a, parameters: {weight: 1, density: [{filter: mlp, value: 0.3}]}}\n"
        "parameters: {density: [{filter: attn, value: 0.6}, {value: 0.9}]}"
    )
    assert merge.params["density"] == [
        [{"filter": "mlp", "value": 0.3}, {"filter": "attn", "value": 0.6}, {"filter": None, "value": 0.9}]
    ]


def test_dtype_is_also_the_output_dtype_unless_out_dtype_is_given() -> None:
    assert one(f"merge_method: ties\nbase_model: base\n{TWO}dtype: bfloat16").params["out_dtype"] == "bfloat16"
    both = one(f"merge_method: ties\nbase_model: base\n{TWO}dtype: float32\nout_dtype: fp16").params
    assert (both["dtype"], both["out_dtype"]) == ("float32", "float16")


CHAIN = """
name: first-merge
merge_method: linear
models: [{model: mistral}, {model: bio}]
parameters: {weight: 0.5}
---
# the final merge, unnamed
merge_method: dare_ties
base_model: mistral
models:
  - {model: second-merge, parameters: {density: 0.6, weight: 0.5}}
  - {model: hermes, parameters: {density: 0.8, weight: 0.5}}
---
name: second-merge
merge_method: slerp
base_model: first-merge
models: [{model: pro}]
parameters: {t: 0.5}
"""


def test_documents_chain_by_name_in_dependency_order() -> None:
    merges = read_config(CHAIN)
    assert [m.name for m in merges] == ["first-merge", "second-merge", None]
    assert merges[1].models == ["first-merge", "pro"]
    assert merges[2].models == ["second-merge", "hermes"] and merges[2].base == "mistral"
    spec = mergekit_to_spec(CHAIN, name="final")
    parse(spec, file="imported.merge")
    assert "merge first_merge = merge_checkpoints(" in spec
    assert "    models = [first_merge, pro]," in spec and "    models = [second_merge, hermes]," in spec
    assert spec.count('= load("mistral")') == 1
    assert 'export final to "final" as hf' in spec and "export first_merge" not in spec


@pytest.mark.parametrize(
    "yaml_text, message",
    [
        ("name: x\nmerge_method: linear\nmodels: [{model: y}]\nparameters: {weight: 1}\n---\n"
         "name: y\nmerge_method: linear\nmodels: [{model: x}]\nparameters: {weight: 1}", "use each other in a circle"),
        ("name: x\nmerge_method: linear\nmodels: [{model: a}]\n---\nname: x\nmerge_method: linear\nmodels: [{model: b}]",
         "two documents are named 'x'"),
        ("merge_method: linear\nmodels: [{model: a}]\n---\nmerge_method: linear\nmodels: [{model: b}]",
         "several documents have no name"),
        ("name: x\nmerge_method: slerp\nbase_model: a\nmodels: [{model: b}]\n---\nmerge_method: linear\nmodels: [{model: x}]",
         "merge 'x': slerp needs the parameter 't'"),
    ],
)
def test_chains_mergekit_rejects_are_refused(yaml_text: str, message: str) -> None:
    with pytest.raises(MergekitImportError, match=message):
        read_config(yaml_text)


def test_tokenizer_settings_are_carried_or_refused() -> None:
    base = one(f"merge_method: ties\nbase_model: base\n{TWO}tokenizer_source: base\nchat_template: chatml")
    assert base.notes == [
        "# tokenizer_source: base: the export copies the tokenizer of base.",
        "# chat_template: chatml was not applied (the tokenizer is copied as it is).",
    ]
    assert one(f"merge_method: linear\n{TWO}tokenizer: {{source: a}}").notes[0].startswith("# tokenizer_source: a")
    refusals = {
        "tokenizer_source: union": "union builds a merged vocabulary",
        "tokenizer_source: b": "re-maps the embeddings to that model's vocabulary",
        "tokenizer: {source: base, tokens: {'<x>': {source: a}}}": "adding tokens or padding",
        "tokenizer: {source: base}\ntokenizer_source: base": "both tokenizer_source and tokenizer",
    }
    for setting, message in refusals.items():
        with pytest.raises(MergekitImportError, match=message):
            read_config(f"merge_method: ties\nbase_model: base\n{TWO}{setting}")


@pytest.mark.parametrize(
    "yaml_text, message",
    [
        ("merge_method: frankenstein\nmodels: [{model: a}]", "'frankenstein' is not a mergekit 0.1.5 method"),
        ("merge_method: linear", "exactly one of 'models', 'slices' or 'modules'"),
        ("merge_method: linear\nmodels: [{model: a}]\nslices: [{sources: [{model: a, layer_range: [0, 1]}]}]",
         "exactly one of 'models', 'slices' or 'modules'"),
        ("merge_method: linear\nmodules: {text: {models: [{model: a}]}}", "'modules'"),
        ("merge_method: ties\nmodels: [{model: a, parameters: {weight: 1}}]", "ties needs a base_model"),
        ("merge_method: ties\nbase_model: b\nmodels: [{model: a}]", "ties needs 'weight' for every model"),
        ("merge_method: nuslerp\nmodels: [{model: a}, {model: b}, {model: c}]\nparameters: {weight: 1}", "exactly 2 model"),
        ("merge_method: model_stock\nbase_model: b\nmodels: [{model: a}]", "at least 2 model"),
        ("merge_method: model_stock\nbase_model: c\n" + TWO + "parameters: {filter_wise: true}", "filter_wise"),
        ("merge_method: nearswap\nbase_model: c\n" + TWO + "parameters: {t: 0.1}", "exactly 1 model"),
        ("merge_method: passthrough\nbase_model: b\nmodels: [{model: a}]", "exactly 1 model"),
        ("merge_method: ties\nbase_model: b\n" + TWO + "parameters: {normalize: [{filter: mlp, value: 1}]}",
         "must be true or false"),
        ("merge_method: task_arithmetic\nbase_model: b\n" + TWO + "parameters: {lambda: [0, 1]}", "lambda that varies"),
        ("merge_method: linear\nmodels: [{model: org/m+org/lora}]", "LoRA adapters"),
        ("merge_method: linear\nmodels: [{model: a, parameters: [1]}]", "every model must be given as"),
        ("merge_method: linear\nmodels: [{model: a}]\nparameters: [weight]", "parameters must be a mapping"),
        ("merge_method: passthrough\nslices: [[a]]", "slices must be a list"),
        ("merge_method: [unclosed", "not valid YAML"),
        ("just: text", "no 'merge_method'"),
    ],
)
def test_configs_without_an_equivalent_are_refused_clearly(yaml_text: str, message: str) -> None:
    with pytest.raises(MergekitImportError, match=message):
        read_config(yaml_text)


def test_every_mergekit_method_is_mapped() -> None:
    mergekit_methods = {
        "linear", "slerp", "nuslerp", "multislerp", "karcher", "task_arithmetic", "ties", "dare_ties", "dare_linear",
        "breadcrumbs", "breadcrumbs_ties", "della", "della_linear", "sce", "model_stock", "nearswap", "arcee_fusion",
        "ram", "ramplus_tl", "passthrough",
    }
    assert set(METHODS) == mergekit_methods


def test_passthrough_slices_stack_layer_ranges() -> None:
    """mergekit's examples/orcamini-platy-44layer.yml."""
    merge = one(
        """
slices:
  - sources:
    - model: psmathur/orca_mini_v3_13b
      layer_range: [0, 24]
  - sources:
    - model: garage-bAInd/Platypus2-13B
      layer_range: [20, 40]
merge_method: passthrough
dtype: float16
"""
    )
    assert merge.op == "passthrough" and merge.models == [] and merge.base is None
    assert merge.slices == [
        {"sources": [{"model": "psmathur/orca_mini_v3_13b", "layer_range": [0, 24], "params": {}}], "base": None,
         "params": {}},
        {"sources": [{"model": "garage-bAInd/Platypus2-13B", "layer_range": [20, 40], "params": {}}], "base": None,
         "params": {}},
    ]
    assert merge.params == {"dtype": "float16", "out_dtype": "float16"}


def test_slices_of_several_sources_carry_the_method_parameters() -> None:
    """mergekit's examples/gradient-slerp.yml, with per-source and per-slice parameters for ties."""
    slerp = one(
        """
slices:
  - sources:
      - {model: orca, layer_range: [0, 40]}
      - {model: platypus, layer_range: [0, 40]}
merge_method: slerp
base_model: orca
parameters:
  t:
    - {filter: self_attn, value: [0, 0.5, 0.3, 0.7, 1]}
    - {value: 0.5}
"""
    )
    assert slerp.slices[0]["base"] == "orca"
    assert slerp.slices[0]["params"] == {
        "t": [{"filter": "self_attn", "value": [0.0, 0.5, 0.3, 0.7, 1.0]}, {"filter": None, "value": 0.5}]
    }
    ties = one(
        """
slices:
  - sources:
      - {model: base, layer_range: [0, 4]}
      - {model: a, layer_range: [0, 4], parameters: {weight: 1, density: [{filter: mlp, value: 0.2}]}}
      - {model: b, layer_range: [4, 8], parameters: {weight: 0.5}}
    parameters: {density: 0.7}
  - sources:
      - {model: a, layer_range: [4, 6]}
merge_method: ties
base_model: base
parameters: {density: 0.9, lambda: 0.5}
"""
    )
    first, second = ties.slices
    assert first["base"] == "base" and [s["model"] for s in first["sources"]] == ["base", "a", "b"]
    # per-model parameters sit on their sources (the base has none)
    assert [s["params"].get("weights") for s in first["sources"]] == [None, 1.0, 0.5]
    assert [s["params"].get("density") for s in first["sources"]] == [
        None, [{"filter": "mlp", "value": 0.2}, {"filter": None, "value": 0.7}], 0.7]
    assert "weights" not in first["params"] and "density" not in first["params"]
    assert first["params"]["scale"] == 0.5 and first["params"]["trim"] == "tensor"
    assert second["params"] == {}  # one source: its layers are copied


@pytest.mark.parametrize(
    "slices, message",
    [
        ("[{sources: [{model: a, layer_range: [0, 4]}, {model: b, layer_range: [0, 3]}]}]", "same number of layers"),
        ("[{sources: [{model: a, layer_range: [4, 2]}]}]", "0 ≤ start < end"),
        ("[{sources: []}]", "a slice needs sources"),
    ],
)
def test_slices_mergekit_rejects_are_refused(slices: str, message: str) -> None:
    with pytest.raises(MergekitImportError, match=message):
        read_config(f"merge_method: passthrough\nslices: {slices}")


def test_passthrough_slice_of_two_sources_and_a_slice_without_its_base_are_refused() -> None:
    with pytest.raises(MergekitImportError, match="passthrough copies one source per slice"):
        read_config("merge_method: passthrough\nslices: [{sources: [{model: a, layer_range: [0, 2]}, {model: b, layer_range: [0, 2]}]}]")
    with pytest.raises(MergekitImportError, match="needs the base model 'c' among the slice's sources"):
        read_config(
            "merge_method: slerp\nbase_model: c\nparameters: {t: 0.5}\n"
            "slices: [{sources: [{model: a, layer_range: [0, 2]}, {model: b, layer_range: [0, 2]}]}]"
        )


def test_slices_become_a_stack() -> None:
    spec = mergekit_to_spec("merge_method: passthrough\nslices: [{sources: [{model: a, layer_range: [0, 2]}]}]")
    assert "stack(" in spec and 'layers(model = "a", start = 0, end = 2)' in spec


# --- imported specs check and run -------------------------------------------------------------------

@pytest.fixture(scope="module")
def ckpts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return tiny_family(tmp_path_factory.mktemp("tiny"))


def _models(paths: list[Path], weights: bool = True) -> str:
    entries = [f"{{model: {p}" + (f", parameters: {{weight: {0.5 + i / 4}}}}}" if weights else "}") for i, p in enumerate(paths)]
    return f"models: [{', '.join(entries)}]\n"


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_imports_into_a_spec_that_checks(ckpts: dict[str, Path], tmp_path: Path, method: str) -> None:
    others = {"slerp": 1, "nearswap": 1, "arcee_fusion": 1, "passthrough": 1, "nuslerp": 2}.get(method, 3)
    paths = [ckpts[k] for k in "abc"][:others]
    base = "" if method == "passthrough" else f"base_model: {ckpts['base']}\n"
    globals_ = {"slerp": "parameters: {t: 0.3}\n", "nearswap": "parameters: {t: 0.01}\n"}.get(method, "")
    yaml_text = f"merge_method: {method}\n{base}{_models(paths)}{globals_}dtype: bfloat16\n"
    if method in ("linear", "karcher"):
        yaml_text += "parameters: {weight: 1.0}\n" if method == "linear" else ""
    spec = mergekit_to_spec(yaml_text)
    lowered = mlspec.loads(spec, file=str(tmp_path / "imported.merge")).plan
    step = next(s for s in lowered.steps if s.op == "merge_checkpoints")
    assert step.params["method"] == METHODS[method].ours
    assert step.params["out_dtype"] == "bfloat16"


def test_a_chained_config_runs_and_equals_the_merges_done_by_hand(ckpts: dict[str, Path], tmp_path: Path) -> None:
    yaml_text = f"""
name: soup
merge_method: linear
models: [{{model: {ckpts["a"]}}}, {{model: {ckpts["b"]}}}]
parameters: {{weight: 0.5}}
---
merge_method: ties
base_model: {ckpts["base"]}
models:
  - {{model: blend, parameters: {{density: 0.6, weight: 0.5}}}}
  - {{model: {ckpts["a"]}, parameters: {{density: [1, 0.4], weight: 0.5}}}}
parameters: {{rescale: true}}
---
name: blend
merge_method: slerp
base_model: soup
models: [{{model: {ckpts["c"]}}}]
parameters: {{t: 0.3}}
"""
    spec = tmp_path / "chain.merge"
    spec.write_text(mergekit_to_spec(yaml_text, name="final"))
    mlspec.load(spec).run(out=tmp_path / "out", cache_dir=tmp_path / "cache", report=False)
    exported = {}
    for file in (tmp_path / "out" / "final").glob("*.safetensors"):
        exported.update(load_file(file))
    ctx = StepContext(name="m", key="m", seed=0, device="cpu", out_dir=tmp_path / "o", work_dir=tmp_path / "w")
    mem = {k: in_memory(p) for k, p in ckpts.items()}
    soup = merge("average", ctx, models=[mem["a"], mem["b"]], weights=[0.5, 0.5])
    blend = merge("slerp", ctx, a=soup, b=mem["c"], t=0.3)
    final = merge("ties", ctx, base=mem["base"], models=[blend, mem["a"]], weights=[0.5, 0.5],
                  density=[0.6, [1.0, 0.4]], trim="tensor", weights_at="before", rescale="l1")
    assert set(exported) == set(final.state)
    for name, tensor in final.state.items():
        torch.testing.assert_close(exported[name], tensor, rtol=1e-5, atol=1e-6, msg=name)

