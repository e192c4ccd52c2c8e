"""Exporting Hugging Face directories and perplexity."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from mlspec.checkpoints.export import export_hf
from mlspec.checkpoints.synthetic import llama_config, write_llama
from mlspec.errors import StepError
from mlspec.ops.checkpoints.loading import load
from mlspec.ops.checkpoints.perplexity import perplexity, sliding_window_nll
from mlspec.ops.checkpoints.specs import LoadParams, PerplexityParams
from mlspec.ops.merge.apply import merge
from mlspec.run.context import StepContext
from mlspec.values import Model

TINY = llama_config(hidden=32, layers=2, intermediate=48, vocab=64, heads=4, dtype="float32")


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    out = {
        "base": write_llama(root / "base", TINY, seed=0),
        "a": write_llama(root / "a", TINY, seed=1, base_seed=0, delta=0.2),
        "b": write_llama(root / "b", TINY, seed=2, base_seed=0, delta=0.2),
    }
    (out["base"] / "tokenizer.json").write_text('{"version": "1.0"}')
    (out["base"] / "tokenizer_config.json").write_text('{"model_max_length": 64}')
    return out


def _ctx(tmp_path: Path) -> StepContext:
    return StepContext(
        name="m",
        key="m",
        seed=0,
        device="cpu",
        out_dir=tmp_path / "out",
        work_dir=tmp_path / "work",
        input_names={"models": ["a", "b"], "model": "m"},
    )


def _weights(directory: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for file in directory.glob("*.safetensors"):
        out.update(load_file(file))
    return out


def test_export_hf_writes_a_loadable_directory_with_config_tokenizer_and_card(
    ckpts: dict[str, Path], tmp_path: Path
) -> None:
    refs = {k: load(_ctx(tmp_path), LoadParams.model_validate({"path": str(p)})) for k, p in ckpts.items()}
    merged = merge(
        "ties", _ctx(tmp_path), density=0.5, base=refs["base"], models=[refs["a"], refs["b"]]
    )
    out = export_hf(
        merged, tmp_path / "exported", spec="merge m = ties(base = base, models = [a, b])", shard_size=9000
    )
    files = sorted(p.name for p in out.iterdir())
    assert "model.safetensors.index.json" in files and "model-00001-of-00012.safetensors" in files
    assert {"config.json", "tokenizer.json", "tokenizer_config.json", "README.md"} <= set(files)
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["torch_dtype"] == "float32"
    card = (out / "README.md").read_text()
    assert "Method: `ties`" in card and "merge m = ties(base = base, models = [a, b])" in card
    index = json.loads((out / "model.safetensors.index.json").read_text())
    got, want = _weights(out), _weights(Path(merged.path))
    assert set(index["weight_map"]) == set(got) == set(want)
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".exported.")]  # staging removed


def test_export_hf_of_a_model_in_memory_takes_the_base_config(ckpts: dict[str, Path], tmp_path: Path) -> None:
    state = _weights(ckpts["a"])
    out = export_hf(Model(arch={"type": "llama"}, state=state), tmp_path / "mem", ckpts["base"])
    assert json.loads((out / "config.json").read_text())["hidden_size"] == 32
    assert (out / "tokenizer.json").is_file()
    with pytest.raises(StepError, match="needs a config.json"):
        export_hf(Model(arch={"type": "mlp"}, state=state), tmp_path / "nowhere")


def test_failed_export_leaves_nothing_behind(
    ckpts: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlspec.checkpoints import hfdir

    def broken(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(hfdir, "write_card", broken)
    ref = load(_ctx(tmp_path), LoadParams.model_validate({"path": str(ckpts["a"])}))
    with pytest.raises(OSError, match="disk full"):
        export_hf(ref, tmp_path / "x")
    assert not (tmp_path / "x").exists() and not list(tmp_path.glob(".x.*"))


class _Bigram(nn.Module):
    """logits[i] depend on token i only, so any window must give the same perplexity."""

    def __init__(self, vocab: int):
        super().__init__()
        self.table = nn.Embedding(vocab, vocab)
        nn.init.normal_(self.table.weight, generator=torch.Generator().manual_seed(0))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.table(ids)


def test_sliding_window_nll_matches_the_formula() -> None:
    ids = torch.randint(0, 17, (101,), generator=torch.Generator().manual_seed(1))

    def uniform(x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(*x.shape, 17)

    total, count = sliding_window_nll(uniform, ids, context=16, stride=5)
    assert count == 100 and math.exp(total / count) == pytest.approx(17.0)
    net = _Bigram(17)
    logp = torch.log_softmax(net.table.weight.detach().double(), dim=-1)
    exact = -sum(float(logp[ids[i - 1], ids[i]]) for i in range(1, 101))
    for context, stride in [(101, 101), (8, 8), (16, 3), (2, 1)]:
        total, count = sliding_window_nll(net, ids, context=context, stride=stride)
        assert count == 100
        assert total == pytest.approx(exact, rel=1e-5)


def test_perplexity_without_transformers_says_how_to_install(
    ckpts: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "transformers", None)
    text = tmp_path / "t.txt"
    text.write_text("hello world")
    ref = load(_ctx(tmp_path), LoadParams.model_validate({"path": str(ckpts["a"])}))
    with pytest.raises(StepError, match=r"pip install 'mlspec\[lm\]'"):
        perplexity(_ctx(tmp_path), PerplexityParams(text=str(text)), model=ref)
    with pytest.raises(StepError, match="text file not found"):
        perplexity(_ctx(tmp_path), PerplexityParams(text=str(tmp_path / "nope.txt")), model=ref)
    with pytest.raises(ValueError, match="stride must not exceed context"):
        PerplexityParams(text="t.txt", context=8, stride=9)


def test_perplexity_of_a_merged_llama_with_transformers(ckpts: dict[str, Path], tmp_path: Path) -> None:
    """The optional path end to end: merge, add a character tokenizer, score a text file."""
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers

    alphabet = sorted(set("the quick brown fox jumps over a lazy dog. "))
    vocab = {"[UNK]": 0, **{ch: i + 1 for i, ch in enumerate(alphabet)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    refs = {k: load(_ctx(tmp_path), LoadParams.model_validate({"path": str(p)})) for k, p in ckpts.items()}
    merged = merge("average", _ctx(tmp_path), models=[refs["a"], refs["b"]])
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(
        merged.path
    )
    text = tmp_path / "text.txt"
    text.write_text("the quick brown fox jumps over a lazy dog. " * 3)
    whole = perplexity(
        _ctx(tmp_path), PerplexityParams(text=str(text), context=512, stride=512), model=merged
    )
    windowed = perplexity(
        _ctx(tmp_path), PerplexityParams(text=str(text), context=16, stride=8), model=merged
    )
    net = transformers.AutoModelForCausalLM.from_pretrained(merged.path, local_files_only=True)
    ids = torch.tensor([vocab[ch] for ch in text.read_text()])
    with torch.no_grad():
        logits = net(input_ids=ids[None]).logits[0]
    full = float(torch.nn.functional.cross_entropy(logits[:-1], ids[1:]))
    assert whole.data["tokens"] == windowed.data["tokens"] == len(ids) - 1
    assert whole.data["perplexity"] == pytest.approx(math.exp(full), rel=1e-4)
    assert windowed.data["perplexity"] != whole.data["perplexity"]  # less history per token
    latin = tmp_path / "latin1.txt"  # a file in another encoding: a step error naming it and the byte
    latin.write_bytes("café au lait".encode("latin-1"))
    with pytest.raises(StepError, match=r"latin1\.txt' is not UTF-8 text \(invalid continuation byte at byte 3\)"):
        perplexity(_ctx(tmp_path), PerplexityParams(text=str(latin)), model=merged)
