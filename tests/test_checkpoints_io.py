"""Reading and writing checkpoints: layouts, lazy loading, the streaming sharded writer, fingerprints."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from mlspec.checkpoints.layout import CheckpointError, fingerprint, locate, parse_size
from mlspec.checkpoints.source import Checkpoint, layer_index
from mlspec.checkpoints.synthetic import llama_config, llama_shapes, write_llama
from mlspec.checkpoints.writer import INDEX_NAME, PlannedTensor, ShardedWriter

TINY = llama_config(hidden=32, layers=2, intermediate=48, vocab=64, heads=4, dtype="float32")


@pytest.fixture(scope="module")
def hf_sharded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_llama(tmp_path_factory.mktemp("ck") / "sharded", TINY, seed=0, shard_size=6000)


def test_writer_round_trips_through_safetensors_with_shards_and_index(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    tensors = {
        "a": torch.randn(10, 7, generator=g),
        "b.bf16": torch.randn(33, generator=g),
        "c.int": torch.arange(12, dtype=torch.int64).reshape(3, 4),
        "empty": torch.zeros(0, 5),
    }
    dtypes = {"a": torch.float32, "b.bf16": torch.bfloat16, "c.int": torch.int64, "empty": torch.float16}
    plan = [PlannedTensor(n, tuple(t.shape), dtypes[n]) for n, t in tensors.items()]
    with ShardedWriter(tmp_path, plan, shard_bytes=100) as writer:
        for name, t in tensors.items():
            writer.write(name, t)
    index = json.loads((tmp_path / INDEX_NAME).read_text())
    assert len(set(index["weight_map"].values())) == 3  # 280 B, 66 B + 96 B, 0 B: greedy packing
    assert index["metadata"]["total_size"] == 280 + 66 + 96
    for name, t in tensors.items():
        with safe_open(str(tmp_path / index["weight_map"][name]), framework="pt") as fh:
            got = fh.get_tensor(name)
        assert got.dtype == dtypes[name]
        assert torch.equal(got, t.to(dtypes[name]))


def test_writer_single_shard_is_model_safetensors_and_loads(tmp_path: Path) -> None:
    t = torch.randn(4, 4)
    with ShardedWriter(tmp_path, [PlannedTensor("w", (4, 4), torch.float32)], shard_bytes=10**9) as w:
        w.write("w", t)
    assert sorted(os.listdir(tmp_path)) == ["model.safetensors"]
    assert torch.equal(load_file(tmp_path / "model.safetensors")["w"], t)


def test_writer_refuses_out_of_order_and_cleans_up_on_error(tmp_path: Path) -> None:
    plan = [PlannedTensor("a", (2,), torch.float32), PlannedTensor("b", (2,), torch.float32)]
    with pytest.raises(RuntimeError, match="expected tensor 'a'"):
        with ShardedWriter(tmp_path, plan, shard_bytes=4) as w:
            w.write("b", torch.zeros(2))
    with pytest.raises(RuntimeError, match="expected tensor 'a' \\[2\\], got 'a' \\[3\\]"):
        with ShardedWriter(tmp_path, plan, shard_bytes=4) as w:
            w.write("a", torch.zeros(3))
    with pytest.raises(ValueError, match="boom"):
        with ShardedWriter(tmp_path, plan, shard_bytes=4) as w:
            w.write("a", torch.zeros(2))
            raise ValueError("boom")
    assert os.listdir(tmp_path) == []


def test_hf_sharded_directory_loads_lazily_with_config(hf_sharded: Path) -> None:
    layout = locate(hf_sharded)
    assert layout.kind == "hf" and len(layout.files) > 2 and layout.weight_map is not None
    with Checkpoint.open(hf_sharded) as ck:
        assert ck.names == list(llama_shapes(TINY))
        assert ck.info("model.layers.1.mlp.down_proj.weight").shape == (32, 48)
        assert ck.num_layers == 2 and not ck.tied_embeddings
        t = ck.tensor("model.norm.weight")
        assert t.shape == (32,) and t.dtype == torch.float32


def test_single_safetensors_and_torch_state_dicts(tmp_path: Path) -> None:
    state = {"layers.0.w": torch.randn(3, 2), "layers.1.w": torch.randn(3, 2)}
    save_file(state, tmp_path / "m.safetensors")
    torch.save(state, tmp_path / "m.pt")
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "trainer.ckpt.pth")
    for name in ("m.safetensors", "m.pt", "trainer.ckpt.pth"):
        with Checkpoint.open(tmp_path / name) as ck:
            assert ck.names == list(state) and ck.num_layers == 2
            assert torch.equal(ck.tensor("layers.1.w"), state["layers.1.w"])


class _Evil:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, ("echo pwned",))


def test_refuses_pickles_that_are_not_plain_state_dicts(tmp_path: Path) -> None:
    with (tmp_path / "evil.pt").open("wb") as fh:
        pickle.dump({"w": _Evil()}, fh, protocol=2)
    with pytest.raises(CheckpointError, match="weights_only=True"):
        Checkpoint.open(tmp_path / "evil.pt")
    torch.save({"w": torch.zeros(1), "step": 5}, tmp_path / "mixed.pt")
    with pytest.raises(CheckpointError, match="not a flat state dict: entries step"):
        Checkpoint.open(tmp_path / "mixed.pt")


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d / "missing", "checkpoint not found"),
        (
            lambda d: (d / "notes.txt").write_text("hi") and d / "notes.txt",
            "expected a Hugging Face model directory",
        ),
        (
            lambda d: (d / "x.safetensors").write_bytes(b"\x00" * 20) and d / "x.safetensors",
            "not a valid safetensors",
        ),
        (lambda d: d, "has no config.json"),
        (lambda d: (d / "config.json").write_text("{}") and d, "has a config.json but no weights"),
    ],
)
def test_malformed_checkpoints_give_clear_errors(tmp_path: Path, make, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(CheckpointError, match=message):
        Checkpoint.open(make(tmp_path))


def test_index_naming_a_missing_shard_is_refused(tmp_path: Path) -> None:
    write_llama(tmp_path, TINY, seed=0, shard_size=6000)
    index = json.loads((tmp_path / INDEX_NAME).read_text())
    index["weight_map"]["model.norm.weight"] = "model-00099-of-00099.safetensors"
    (tmp_path / INDEX_NAME).write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="lists shards that do not exist: model-00099"):
        Checkpoint.open(tmp_path)


def test_fingerprint_follows_content_not_path(tmp_path: Path) -> None:
    state = {"w": torch.zeros(8)}
    save_file(state, tmp_path / "m.safetensors")
    stat = (tmp_path / "m.safetensors").stat()
    first = fingerprint(locate(tmp_path / "m.safetensors"))
    assert fingerprint(locate(tmp_path / "m.safetensors")) == first
    save_file({"w": torch.ones(8)}, tmp_path / "m.safetensors")  # same size, same header
    os.utime(tmp_path / "m.safetensors", ns=(stat.st_atime_ns, stat.st_mtime_ns))  # even with the old mtime
    assert fingerprint(locate(tmp_path / "m.safetensors")) != first


def test_layer_index_and_sizes() -> None:
    assert layer_index("model.layers.11.mlp.up_proj.weight") == 11
    assert layer_index("transformer.h.3.attn.c_attn.weight") == 3
    assert layer_index("model.embed_tokens.weight") is None
    assert parse_size("5GB") == 5 * 10**9 and parse_size("500MiB") == 500 * 2**20 and parse_size(123) == 123
    with pytest.raises(ValueError, match="not '5 parsecs'"):
        parse_size("5 parsecs")


def test_reads_with_pread_equal_safetensors_and_rows_are_row_ranges(tmp_path: Path) -> None:
    """Tensors (and row ranges of them) read with pread are what safetensors itself reads, in every
    dtype; nothing of the file stays mapped; a file cut short is a clear error."""
    g = torch.Generator().manual_seed(0)
    tensors = {
        "w": torch.randn(37, 5, generator=g).bfloat16(),
        "f": torch.randn(11, 3, 2, generator=g),
        "h": torch.randn(9, generator=g).half(),
        "d": torch.randn(4, 4, generator=g, dtype=torch.float64),
        "i": torch.arange(10, dtype=torch.int64),
        "m": torch.rand(6, 2, generator=g) < 0.5,
        "s": torch.tensor(2.5),
        "e": torch.zeros(0, 3),
        "big": torch.randn(2100, 1024, generator=g).bfloat16(),  # 4 MiB and more: memory numpy allocated
        "big32": torch.randn(1100, 1024, generator=g),
    }
    save_file(tensors, str(tmp_path / "model.safetensors"))
    with Checkpoint.open(tmp_path / "model.safetensors") as ck:
        for name, t in tensors.items():
            assert torch.equal(ck.tensor(name), t) and ck.tensor(name).dtype == t.dtype, name
        assert torch.equal(ck.tensor("w", rows=(3, 20)), tensors["w"][3:20])
        assert torch.equal(ck.tensor("f", rows=(10, 11)), tensors["f"][10:11])
        assert torch.equal(ck.tensor("big32", rows=(50, 1100)), tensors["big32"][50:])
        big = ck.tensor("big")
        maps = Path("/proc/self/maps")
        if maps.exists():
            assert "model.safetensors" not in maps.read_text()
    big[0] = 1.0  # a tensor of its own: writable after the file is closed, and nothing else changes
    assert torch.equal(big[1:], tensors["big"][1:]) and bool((big[0] == 1).all())
    assert big.shape == (2100, 1024) and big.dtype == torch.bfloat16 and big.is_contiguous()
    data = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[:-40])
    with pytest.raises(CheckpointError, match="cut.safetensors"):
        with Checkpoint.open(tmp_path / "cut.safetensors") as ck:
            for name in ck.names:
                ck.tensor(name)
