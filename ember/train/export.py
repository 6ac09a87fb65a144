"""Write a trained model as a standard Hugging Face checkpoint folder.

The folder (config.json, model.safetensors, generation_config.json, tokenizer.json,
tokenizer_config.json) loads with ``ember.models.loader.load_model`` and with
``transformers.AutoModelForCausalLM`` / ``AutoTokenizer``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from ember.models.llama import LlamaForCausalLM
from ember.train.config import ModelShape
from ember.train.tokenizer_trainer import EOS_TOKEN, TOKENIZER_FILES


def export_hf(
    model: LlamaForCausalLM,
    shape: ModelShape,
    tokenizer_dir: Path,
    out_dir: Path,
    *,
    dtype: torch.dtype = torch.bfloat16,
    metadata: dict | None = None,
) -> Path:
    """Write ``model`` (weights cast to ``dtype``) with its tokenizer into ``out_dir``.

    The folder is replaced as a whole, so a reader never sees a half-written export.
    ``metadata`` (e.g. the recipe and final validation loss) goes to ``ember_train.json``.
    """
    from safetensors.torch import save_file
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    eos = tokenizer.token_to_id(EOS_TOKEN)
    im_end = tokenizer.token_to_id("<|im_end|>")
    config = shape.hf_config(vocab_size=model.config.vocab_size, bos_token_id=eos, eos_token_id=eos)
    config["torch_dtype"] = str(dtype).removeprefix("torch.")

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}-"))
    try:
        weights = {name: tensor.detach().to(dtype).contiguous() for name, tensor in model.hf_state_dict().items()}
        save_file(weights, str(staging / "model.safetensors"), metadata={"format": "pt"})
        _write_json(staging / "config.json", config)
        _write_json(
            staging / "generation_config.json",
            {
                "bos_token_id": eos,
                "eos_token_id": [eos] if im_end is None else [eos, im_end],
                "pad_token_id": eos,
            },
        )
        for name in TOKENIZER_FILES:
            shutil.copyfile(tokenizer_dir / name, staging / name)
        tokenizer_config = json.loads((staging / "tokenizer_config.json").read_text("utf-8"))
        tokenizer_config["model_max_length"] = shape.max_position_embeddings
        _write_json(staging / "tokenizer_config.json", tokenizer_config)
        if metadata is not None:
            _write_json(staging / "ember_train.json", metadata)
        # NOTE: the old export is moved aside before the new one takes its name; both
        # renames are atomic, so at every moment out_dir is absent or complete.
        if out_dir.exists():
            retired = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}-old-"))
            os.replace(out_dir, retired / "export")
            os.replace(staging, out_dir)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir


def _write_json(file: Path, data: dict) -> None:
    file.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
