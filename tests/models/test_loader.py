"""Checkpoint formats (sharded, .bin, bf16, hub ids) and the errors a bad checkpoint causes."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from ember.errors import InvalidInputError, ModelLoadError
from ember.models.loader import load_model

VOCAB = 300


def _logits(module, ids):
    with torch.no_grad():
        return module.compute_logits(module(ids))


@pytest.fixture
def ids():
    return torch.randint(0, VOCAB, (2, 10), generator=torch.Generator().manual_seed(0))


@pytest.fixture
def llama_dir(hf_checkpoint, tmp_path):
    """A private copy of the llama_gqa checkpoint that a test may damage."""
    _, src = hf_checkpoint("llama_gqa")
    return shutil.copytree(src, tmp_path / "ckpt")


def test_sharded_safetensors(hf_model_factory, tmp_path, ids):
    hf_model = hf_model_factory("qwen2")
    hf_model.save_pretrained(tmp_path, max_shard_size="100KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    assert len(list(tmp_path.glob("model-*.safetensors"))) > 1
    with torch.no_grad():
        expected = hf_model(ids).logits
    got = _logits(load_model(tmp_path).module, ids)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


def test_pytorch_bin_checkpoint(hf_model_factory, tmp_path, ids):
    hf_model = hf_model_factory("opt_pre_ln")
    hf_model.config.save_pretrained(tmp_path)
    state = {k: v for k, v in hf_model.state_dict().items() if k != "lm_head.weight"}
    # The original facebook/opt checkpoints name weights `decoder.*` (no `model.` prefix).
    state = {k.removeprefix("model."): v.clone() for k, v in state.items()}
    torch.save(state, tmp_path / "pytorch_model.bin")
    with torch.no_grad():
        expected = hf_model(ids).logits
    got = _logits(load_model(tmp_path).module, ids)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("dtype", ["bf16", "bfloat16", torch.bfloat16])
def test_bf16_loading(hf_checkpoint, dtype, ids):
    hf_model, path = hf_checkpoint("llama_gqa")
    loaded = load_model(path, dtype=dtype)
    assert {p.dtype for p in loaded.module.parameters()} == {torch.bfloat16}
    got = _logits(loaded.module, ids)
    assert got.dtype == torch.float32
    with torch.no_grad():
        expected = hf_model(ids).logits
    # bf16 has ~3 significant digits; a wrong mapping would be off by O(1).
    assert (got - expected).abs().max() < 0.25
    assert (got.argmax(-1) == expected.argmax(-1)).float().mean() > 0.9


def test_dtype_auto_is_fp32_on_cpu_and_unknown_dtype_is_rejected(hf_checkpoint):
    _, path = hf_checkpoint("llama_gqa")
    assert next(load_model(path, dtype="auto").module.parameters()).dtype == torch.float32
    with pytest.raises(InvalidInputError, match="float64"):
        load_model(path, dtype="float64")


def test_loaded_model_metadata(hf_checkpoint):
    _, path = hf_checkpoint("llama_gqa")
    loaded = load_model(path)
    assert loaded.path == path and not loaded.module.training
    assert loaded.config.architecture == "LlamaForCausalLM" and loaded.config.num_kv_heads == 2
    assert loaded.generation_config["eos_token_id"] == 2
    assert loaded.tokenizer is None
    assert loaded.eos_token_ids == (2,)


def test_hub_id_resolves_through_snapshot_download(monkeypatch, hf_checkpoint):
    _, path = hf_checkpoint("llama_gqa")
    calls = []

    def fake_download(repo_id, **kwargs):
        calls.append((repo_id, kwargs["local_files_only"]))
        return str(path)

    monkeypatch.setattr("huggingface_hub.snapshot_download", fake_download)
    assert load_model("someorg/tiny-llama").path == path
    assert calls == [("someorg/tiny-llama", True)]


def test_unreachable_hub_gives_clear_error(monkeypatch):
    def offline(repo_id, **kwargs):
        raise OSError("connection refused")

    monkeypatch.setattr("huggingface_hub.snapshot_download", offline)
    with pytest.raises(ModelLoadError, match="someorg/no-such-model.*hub could not be reached"):
        load_model("someorg/no-such-model")


def test_missing_directory(tmp_path):
    with pytest.raises(ModelLoadError, match="no such checkpoint directory"):
        load_model(tmp_path / "nope")


def test_no_config_json(tmp_path):
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_model(tmp_path)


def test_invalid_config_json(llama_dir):
    (llama_dir / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="config.json: invalid JSON"):
        load_model(llama_dir)


def test_config_missing_required_key(llama_dir):
    config = json.loads((llama_dir / "config.json").read_text())
    del config["hidden_size"]
    (llama_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="'hidden_size'"):
        load_model(llama_dir)


def test_unknown_architecture(llama_dir):
    config = json.loads((llama_dir / "config.json").read_text())
    config["architectures"] = ["GPT2LMHeadModel"]
    (llama_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="GPT2LMHeadModel.*supported: .*LlamaForCausalLM"):
        load_model(llama_dir)


def test_no_weight_files(llama_dir):
    (llama_dir / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="no weight files"):
        load_model(llama_dir)


def test_corrupt_safetensors(llama_dir):
    (llama_dir / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00garbage!")
    with pytest.raises(ModelLoadError, match="model.safetensors: corrupt"):
        load_model(llama_dir)


def test_truncated_safetensors(llama_dir):
    data = (llama_dir / "model.safetensors").read_bytes()
    (llama_dir / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match="corrupt"):
        load_model(llama_dir)


class _NotAWeight:
    pass


@pytest.mark.parametrize("content", ["garbage", "pickled object"])
def test_unreadable_or_unsafe_bin(llama_dir, content):
    (llama_dir / "model.safetensors").unlink()
    if content == "garbage":
        (llama_dir / "pytorch_model.bin").write_bytes(b"not a pickle")
    else:  # weights_only=True must refuse to unpickle arbitrary objects
        torch.save({"x": _NotAWeight()}, llama_dir / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match="pytorch_model.bin: cannot read weights"):
        load_model(llama_dir)


def _edit_weights(directory, edit):
    file = directory / "model.safetensors"
    state = load_file(file)
    edit(state)
    save_file(state, file, metadata={"format": "pt"})


def test_missing_weight(llama_dir):
    _edit_weights(llama_dir, lambda s: s.pop("model.layers.1.self_attn.k_proj.weight"))
    with pytest.raises(ModelLoadError, match="missing 1 weight.*layers.1.self_attn.k_proj.weight"):
        load_model(llama_dir)


def test_unexpected_weight(llama_dir):
    _edit_weights(llama_dir, lambda s: s.update({"model.extra.weight": torch.zeros(2)}))
    with pytest.raises(ModelLoadError, match="unexpected weight 'model.extra.weight'"):
        load_model(llama_dir)


def test_shape_mismatch(llama_dir):
    config = json.loads((llama_dir / "config.json").read_text())
    config["intermediate_size"] = 96
    (llama_dir / "config.json").write_text(json.dumps(config))
    match = r"mlp.down_proj.weight' has shape \(64, 128\).*\(64, 96\)"
    with pytest.raises(ModelLoadError, match=match):
        load_model(llama_dir)


def test_missing_shard(hf_model_factory, tmp_path):
    hf_model_factory("llama_gqa").save_pretrained(tmp_path, max_shard_size="100KB")
    next(iter(sorted(tmp_path.glob("model-*.safetensors")))).unlink()
    with pytest.raises(ModelLoadError, match="missing"):
        load_model(tmp_path)
