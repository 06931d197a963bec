"""Lazy reader and sharded writer: round trips, header checks, pickle policy."""

import json
import os
import struct

import pytest
import torch
from safetensors.torch import load_file, save_file

from mergeflow.errors import MissingTensor, ModelError
from mergeflow.io.header import read_header
from mergeflow.io.reader import ModelReader
from mergeflow.io.writer import OutTensor, ShardedWriter, plan_shards


def state_dict_of(path):
    out = {}
    for f in sorted(path.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def test_reader_reads_sharded_dir_exactly(toy):
    path = toy("gpt2")
    assert (path / "model.safetensors.index.json").exists()
    ref = state_dict_of(path)
    r = ModelReader("m", path)
    assert set(r.tensors) == set(ref) and r.model_type == "gpt2"
    for name, t in ref.items():
        got = r.read(name)
        assert got.dtype == t.dtype and torch.equal(got, t)
    name = next(n for n, t in ref.items() if t.dim() == 2)
    assert torch.equal(r.read(name, rows=(1, 3)), ref[name][1:3])
    assert r.read(name, dtype=torch.float64).dtype == torch.float64
    with pytest.raises(MissingTensor, match="no tensor 'nope'"):
        r.read("nope")


def test_reader_single_file(tmp_path):
    save_file({"w": torch.arange(6.0).reshape(2, 3)}, str(tmp_path / "x.safetensors"))
    r = ModelReader("x", tmp_path / "x.safetensors")
    assert torch.equal(r.read("w"), torch.arange(6.0).reshape(2, 3)) and r.config is None


def _corrupt(tmp_path, header: dict | bytes, data: bytes = b"\0" * 16, declared: int | None = None):
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    p = tmp_path / "bad.safetensors"
    p.write_bytes(struct.pack("<Q", declared if declared is not None else len(raw)) + raw + data)
    return p


@pytest.mark.parametrize(
    "header, data, declared, fragment",
    [
        (b"{not json", b"", None, "invalid JSON"),
        (b"[]", b"", None, "not a JSON object"),
        ({"w": {"dtype": "F99", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8, None, "unknown dtype"),
        ({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 8, None, "outside the file"),
        ({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 16]}}, b"\0" * 16, None, "needs 12 bytes"),
        (
            {
                "w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                "v": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
            },
            b"\0" * 12,
            None,
            "overlaps",
        ),
        ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 12, None, "padded"),
        ({"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 8]}}, b"\0" * 8, None, "invalid shape"),
        ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8, 10**12, "declares"),
    ],
)
def test_lying_headers_are_refused(tmp_path, header, data, declared, fragment):
    p = _corrupt(tmp_path, header, data, declared)
    with pytest.raises(ModelError, match=fragment):
        read_header(p)


def test_truncated_shard_is_refused(tmp_path, toy):
    src = toy("llama")
    dst = tmp_path / "m"
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    shard = sorted(dst.glob("model-*.safetensors"))[0]
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(ModelError, match="outside the file|truncated"):
        ModelReader("m", dst)


def test_index_pointing_outside_is_refused(tmp_path):
    save_file({"w": torch.zeros(2)}, str(tmp_path / "outside.safetensors"))
    d = tmp_path / "m"
    d.mkdir()
    (d / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"w": "../outside.safetensors"}})
    )
    with pytest.raises(ModelError, match="outside the model directory"):
        ModelReader("m", d)
    (d / "link.safetensors").symlink_to(tmp_path / "outside.safetensors")
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": "link.safetensors"}}))
    with pytest.raises(ModelError, match="outside the model directory"):
        ModelReader("m", d)


def test_pickle_refused_unless_allowed(tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    torch.save({"w": torch.ones(3)}, d / "pytorch_model.bin")
    with pytest.raises(ModelError, match="--allow-pickle"):
        ModelReader("m", d)
    r = ModelReader("m", d, allow_pickle=True)
    assert torch.equal(r.read("w"), torch.ones(3))


def test_pickle_with_code_is_refused_even_when_allowed(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("true",))

    d = tmp_path / "m"
    d.mkdir()
    torch.save({"w": Evil()}, d / "pytorch_model.bin")
    with pytest.raises(ModelError, match="weights_only"):
        ModelReader("m", d, allow_pickle=True)


def test_writer_shards_round_trip_independent_of_order(tmp_path):
    gen = torch.Generator().manual_seed(0)
    tensors = {f"t{i}": torch.randn(10 + i, 7, generator=gen) for i in range(9)}
    tensors["half"] = torch.randn(5, dtype=torch.float32, generator=gen).to(torch.bfloat16)
    tensors["ids"] = torch.arange(4)
    tensors["scalar"] = torch.tensor(3.0)
    specs = [
        OutTensor(
            n, {torch.float32: "F32", torch.bfloat16: "BF16", torch.int64: "I64"}[t.dtype], tuple(t.shape)
        )
        for n, t in tensors.items()
    ]
    outs = []
    for k, order in enumerate([list(tensors), list(reversed(tensors))]):
        d = tmp_path / f"o{k}"
        d.mkdir()
        layouts = plan_shards(specs, shard_size=1200)
        w = ShardedWriter(d, layouts)
        for n in order:
            w.write(n, tensors[n])
        files = w.finish()
        assert len(layouts) > 2 and "model.safetensors.index.json" in files
        index = json.loads((d / "model.safetensors.index.json").read_text())
        assert set(index["weight_map"]) == set(tensors)
        loaded = state_dict_of(d)
        for n, t in tensors.items():
            assert torch.equal(loaded[n], t), n
        outs.append({f: (d / f).read_bytes() for f in files})
    assert outs[0] == outs[1]


def test_writer_refuses_wrong_dtype_or_shape(tmp_path):
    w = ShardedWriter(tmp_path, plan_shards([OutTensor("a", "F32", (2,))], 10**9))
    with pytest.raises(ValueError, match="layout says"):
        w.write("a", torch.zeros(3))
    with pytest.raises(ValueError, match="layout says"):
        w.write("a", torch.zeros(2, dtype=torch.float16))
    w.close()
