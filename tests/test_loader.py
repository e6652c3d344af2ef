"""The loader on both layouts, through the synthetic writer, and every bad-input case with its message."""
import json
import re
import shutil
import struct

import pytest
import torch
from safetensors import safe_open

from gpt_oss_triton.loader import CheckpointError, SafetensorsFile, expected_tensors, hf_names, load, make_checkpoint
from gpt_oss_triton.model import PRESETS, GptOss

CONFIG = PRESETS["tiny"]


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    return {
        "hf": make_checkpoint(root / "hf", CONFIG, layout="hf", seed=3),
        "hf_sharded": make_checkpoint(root / "hf_sharded", CONFIG, layout="hf", seed=3, shard_bytes=1 << 20),
        "original": make_checkpoint(root / "original", CONFIG, layout="original", seed=3),
    }


def _copy(src, tmp_path):
    dst = tmp_path / src.name
    shutil.copytree(src, dst)
    return dst


def test_layouts_give_identical_weights(ckpts):
    loaded = {k: load(p) for k, p in ckpts.items()}
    assert [c.layout for c in loaded.values()] == ["hf", "hf", "original"]
    ref = loaded["original"].tensors
    assert list(ref) == list(expected_tensors(CONFIG))
    for c in loaded.values():
        assert c.config == CONFIG
        assert c.tensors.keys() == ref.keys()
        for name, t in c.tensors.items():
            assert t.dtype == ref[name].dtype and torch.equal(t, ref[name]), name
    assert len(list(ckpts["hf_sharded"].glob("model-*-of-*.safetensors"))) > 1


def test_files_are_real_safetensors_in_the_real_names(ckpts):
    """The official library reads what we write, under the released layouts' tensor names."""
    ours = load(ckpts["original"]).tensors
    with safe_open(ckpts["original"] / "model.safetensors", framework="pt") as f:
        for name in f.keys():
            assert torch.equal(f.get_tensor(name), ours[name])
    with safe_open(ckpts["hf"] / "model.safetensors", framework="pt") as f:
        names = set(f.keys())
        q = f.get_tensor("model.layers.1.self_attn.q_proj.weight")
        assert f.get_tensor("model.layers.0.mlp.experts.gate_up_proj_blocks").dtype == torch.uint8
    assert {"model.embed_tokens.weight", "lm_head.weight", "model.layers.3.mlp.router.bias",
            "model.layers.2.self_attn.sinks", "model.layers.0.mlp.experts.down_proj_scales"} <= names
    assert torch.equal(q, ours["block.1.attn.qkv.weight"][:q.shape[0]])
    index = json.loads((ckpts["hf_sharded"] / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in ours.values())


def test_golden_layouts_are_identical(golden_dir):
    a, b = (load(golden_dir / "tiny_seed7" / lay) for lay in ("hf", "original"))
    assert (a.layout, b.layout) == ("hf", "original")
    for name, t in a.tensors.items():
        assert torch.equal(t, b.tensors[name]), name


def test_mxfp4_stays_packed_and_dtype_cast_applies_to_floats(ckpts):
    c = load(ckpts["hf"], dtype=torch.float32)
    assert c.tensors["block.0.mlp.mlp1_weight.blocks"].dtype == torch.uint8
    assert c.tensors["block.0.mlp.mlp1_weight.scales"].dtype == torch.uint8
    assert c.tensors["block.0.attn.qkv.weight"].dtype == torch.float32


def test_tensors_are_views_of_the_mapped_file(ckpts):
    """On the CPU in the stored dtype nothing is copied: tensors sit at their file offsets in one mapping."""
    c = load(ckpts["original"])
    infos = SafetensorsFile(ckpts["original"] / "model.safetensors").infos
    a, b = "block.0.mlp.mlp1_weight.blocks", "block.3.mlp.mlp2_weight.scales"
    assert c.tensors[b].data_ptr() - c.tensors[a].data_ptr() == infos[b].start - infos[a].start


def test_original_subfolder_and_tokenizer(ckpts, tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(ckpts["original"], repo / "original")
    (repo / "tokenizer.json").write_text("{}")
    c = load(repo)
    assert c.layout == "original" and c.tokenizer_path == repo / "tokenizer.json"
    assert load(ckpts["hf"]).tokenizer_path is None


def test_progress_bar(ckpts, capsys):
    load(ckpts["original"], progress=True)
    assert "100.0%" in capsys.readouterr().err


# -- bad input: each names the file and tensor at fault, and nothing is returned ------------------------------

def _rewrite(path, edit):
    """Rewrite a safetensors file through `edit(dict of tensors)` with the official writer."""
    from safetensors.torch import load_file, save_file
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


def test_missing_tensor(ckpts, tmp_path):
    d = _copy(ckpts["original"], tmp_path)
    _rewrite(d / "model.safetensors", lambda t: t.pop("block.2.attn.sinks"))
    with pytest.raises(CheckpointError, match="missing tensor 'block.2.attn.sinks'"):
        load(d)


def test_unexpected_tensor(ckpts, tmp_path):
    d = _copy(ckpts["original"], tmp_path)
    _rewrite(d / "model.safetensors", lambda t: t.update({"block.0.attn.extra": torch.zeros(2)}))
    with pytest.raises(CheckpointError, match=r"model.safetensors: unexpected tensor 'block.0.attn.extra'"):
        load(d)


def test_wrong_shape(ckpts, tmp_path):
    d = _copy(ckpts["hf"], tmp_path)
    _rewrite(d / "model.safetensors", lambda t: t.update({"model.layers.1.self_attn.k_proj.bias": torch.zeros(3)}))
    with pytest.raises(CheckpointError, match=r"'model.layers.1.self_attn.k_proj.bias' has shape \[3\], expected \[128\]"):
        load(d)


def _kinds(layout):
    """Every tensor kind of a checkpoint in `layout`, by its name on disk: layer 1's and the global ones."""
    names = [n for parts in hf_names(CONFIG).values() for n, _ in parts] if layout == "hf" else list(expected_tensors(CONFIG))
    return [n for n in names if re.search(r"(block|layers)\.1\.", n) or not re.search(r"\.\d+\.", n)]


def _reshaped(data: bytes, name: str) -> tuple[bytes, list, list]:
    """The safetensors file `data` with tensor `name` given a wrong shape of the same size (its last dim split
    in two): the byte offsets stay valid, so only a shape check can tell. -> (file, old shape, new shape)."""
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    old = header[name]["shape"]
    new = old[:-1] + [old[-1] // 2, 2]
    header[name]["shape"] = new
    blob = json.dumps(header).encode()
    return struct.pack("<Q", len(blob)) + blob + data[8 + n:], old, new


@pytest.mark.parametrize("layout,name", [(lay, n) for lay in ("hf", "original") for n in _kinds(lay)])
def test_wrong_shape_of_every_tensor_kind(ckpts, tmp_path, layout, name):
    """Guards the shape check of every tensor kind (sinks, norms, biases, MXFP4 blocks and scales, ...): a
    tensor of the right size but the wrong shape fails in the loader, naming the file and the tensor, before
    from_pretrained hands anything to load_state_dict (whose error names neither)."""
    src = ckpts[layout]
    shutil.copy(src / "config.json", tmp_path / "config.json")
    data, old, new = _reshaped((src / "model.safetensors").read_bytes(), name)
    (tmp_path / "model.safetensors").write_bytes(data)
    with pytest.raises(CheckpointError, match=rf"model.safetensors: tensor '{re.escape(name)}' has shape "
                                              rf"{re.escape(str(new))}, expected {re.escape(str(old))}"):
        GptOss.from_pretrained(tmp_path, device="cpu", backend="torch")


def test_wrong_dtype(ckpts, tmp_path):
    d = _copy(ckpts["original"], tmp_path)
    _rewrite(d / "model.safetensors",
             lambda t: t.update({"block.1.mlp.mlp2_weight.scales": t["block.1.mlp.mlp2_weight.scales"].to(torch.bfloat16)}))
    with pytest.raises(CheckpointError, match=r"'block.1.mlp.mlp2_weight.scales' is torch.bfloat16, expected uint8"):
        load(d)
    _rewrite(d / "model.safetensors",
             lambda t: t.update({"block.1.mlp.mlp2_weight.scales": t["block.1.mlp.mlp2_weight.scales"].to(torch.uint8),
                                 "norm.scale": t["norm.scale"].to(torch.int32)}))
    with pytest.raises(CheckpointError, match=r"'norm.scale' is torch.int32, expected a float dtype"):
        load(d)


def test_truncated_file(ckpts, tmp_path):
    d = _copy(ckpts["original"], tmp_path)
    f = d / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[:-1000])
    with pytest.raises(CheckpointError, match=r"model.safetensors: tensor 'unembedding.weight': truncated file"):
        load(d)
    f.write_bytes(data[:4])
    with pytest.raises(CheckpointError, match="truncated: 4 bytes"):
        load(d)


def test_corrupt_header(ckpts, tmp_path):
    d = _copy(ckpts["original"], tmp_path)
    f = d / "model.safetensors"
    data = bytearray(f.read_bytes())
    (n,) = struct.unpack("<Q", data[:8])
    f.write_bytes(struct.pack("<Q", 1 << 40) + data[8:])
    with pytest.raises(CheckpointError, match="header length 1099511627776 does not fit"):
        load(d)
    data[8] = ord("#")
    f.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="model.safetensors: corrupt safetensors header"):
        load(d)
    header = json.loads("{" + bytes(data[9:8 + n]).decode())
    header["norm.scale"]["shape"] = [7]
    blob = json.dumps(header).encode()
    f.write_bytes(struct.pack("<Q", len(blob)) + blob + bytes(data[8 + n:]))
    with pytest.raises(CheckpointError, match=r"tensor 'norm.scale': corrupt header: offsets .* BF16 \[7\] needs 14"):
        load(d)


def test_config_and_weights_disagree(ckpts, tmp_path):
    d = _copy(ckpts["hf"], tmp_path)
    cfg = json.loads((d / "config.json").read_text())
    cfg["num_local_experts"] = 16
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="config and weights disagree.*16 experts"):
        load(d)
    cfg["num_local_experts"], cfg["num_hidden_layers"], cfg["layer_types"] = 8, 3, cfg["layer_types"][:3]
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"unexpected tensor 'model.layers.3.*config.json says 3 layers"):
        load(d)


def test_unknown_layout_and_missing_paths(ckpts, tmp_path):
    with pytest.raises(CheckpointError, match="no such directory"):
        load(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="unknown layout: no config.json"):
        load(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(CheckpointError, match="unknown layout: neither"):
        load(tmp_path)
    with pytest.raises(CheckpointError, match="not a directory"):
        load(ckpts["original"] / "model.safetensors")
    d = _copy(ckpts["original"], tmp_path)
    (d / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        load(d)


def test_sharded_index_problems(ckpts, tmp_path):
    d = _copy(ckpts["hf_sharded"], tmp_path)
    shard = sorted(d.glob("model-*.safetensors"))[1]
    shard.unlink()
    with pytest.raises(CheckpointError, match=f"names shard '{shard.name}', which is missing"):
        load(d)
    shutil.copy(ckpts["hf_sharded"] / shard.name, shard)
    index = json.loads((d / "model.safetensors.index.json").read_text())
    name = next(iter(index["weight_map"]))
    index["weight_map"][name] = shard.name
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=f"holds tensor '{name}', which model.safetensors.index.json puts in"):
        load(d)
