"""A tiny random-init Hugging Face checkpoint for tests and smoke runs (fast, deterministic).

The checkpoint is real: ``transformers`` loads it (config.json, model.safetensors,
generation_config.json, tokenizer.json, tokenizer_config.json with a chat template), but it
is written by Ember's own model code, so producing it needs no ``transformers``.
"""

from __future__ import annotations

import json
import math
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from ember.models.config import ModelArchConfig
from ember.models.registry import get_model_class
from ember.models.tokenizer import CHATML_TEMPLATE

SPECIAL_TOKENS = ("<s>", "</s>", "<pad>", "<|im_start|>", "<|im_end|>")
TOKENIZER_VOCAB_SIZE = 384
MAX_POSITIONS = 512

_CORPUS = '''
The quick brown fox jumps over the lazy dog. A large language model reads a prompt one
token at a time and predicts the next token. The server keeps the keys and values of every
token it has seen in a paged cache, so that a new request that shares a prefix with an old
one can start where the old one left off. When memory runs short, the least useful blocks
are evicted, and the cost of computing them again is weighed against how likely they are
to be used. Hello, world! How are you today? I am fine, thank you. What time is it? It is
ten past nine in the morning, and the weather is cold but bright.
Once upon a time there was a small village by the sea. Every morning the fishermen went out
in their boats, and every evening they came back with their nets full of fish. The children
played on the beach and the old people sat in the sun and told stories about the past.
Questions and answers: Why is the sky blue? Because air scatters blue light more than red
light. Where do rivers go? Most rivers flow into the sea. Can machines think? Nobody knows.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 42 100 2024 3.14159 1e-6. Symbols: + - * / = < > ( ) [ ] { }.
Other scripts: café, naïve, über, 東京, 北京, 日本語, 한국어, Привет мир, 🙂 🚀.
'''

_CODE = '''
def fibonacci(n: int) -> list[int]:
    """Return the first n Fibonacci numbers."""
    values = [0, 1]
    while len(values) < n:
        values.append(values[-1] + values[-2])
    return values[:n]


class Request:
    def __init__(self, request_id: str, prompt_ids: list[int], max_tokens: int = 16):
        self.request_id = request_id
        self.prompt_ids = prompt_ids
        self.output_ids: list[int] = []
        self.max_tokens = max_tokens

    @property
    def is_finished(self) -> bool:
        return len(self.output_ids) >= self.max_tokens


def softmax(x):
    import math
    m = max(x)
    exps = [math.exp(v - m) for v in x]
    total = sum(exps)
    return [e / total for e in exps]


for i in range(10):
    if i % 2 == 0:
        print(f"{i} is even")
    else:
        print(f"{i} is odd")

import torch
x = torch.randn(4, 8)
y = torch.nn.functional.relu(x @ x.T)
print(y.shape, y.sum().item())
'''


def make_debug_checkpoint(
    path: str | Path, *, arch: str = "llama", seed: int = 0, **config_overrides: Any
) -> Path:
    """Write a random-init checkpoint of ``arch`` ("llama" or "opt") to ``path``.

    ``config_overrides`` are HF ``config.json`` keys (e.g. ``num_hidden_layers=4``,
    ``tie_word_embeddings=True``, ``num_key_value_heads=1``). Same arguments, same bytes.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer_json = _tokenizer_json()
    ids = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    hf_config = _hf_config(
        arch, config_overrides, bos=ids["<s>"], eos=ids["</s>"], pad=ids["<pad>"]
    )
    if hf_config["vocab_size"] < TOKENIZER_VOCAB_SIZE:
        raise ValueError(
            f"vocab_size={hf_config['vocab_size']} is smaller than the debug tokenizer's "
            f"{TOKENIZER_VOCAB_SIZE} tokens"
        )
    config = ModelArchConfig.from_hf(hf_config)
    with torch.device("meta"):
        model = get_model_class(config.architecture)(config)
    model = model.to_empty(device="cpu")
    _init_weights(model, seed)

    from safetensors.torch import save_file

    save_file(model.hf_state_dict(), str(path / "model.safetensors"), metadata={"format": "pt"})
    _write_json(path / "config.json", hf_config)
    _write_json(path / "generation_config.json", {
        "bos_token_id": ids["<s>"],
        "eos_token_id": [ids["</s>"], ids["<|im_end|>"]],
        "pad_token_id": ids["<pad>"],
    })
    (path / "tokenizer.json").write_text(tokenizer_json, encoding="utf-8")
    _write_json(path / "tokenizer_config.json", {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "pad_token": "<pad>",
        "add_bos_token": True,
        "clean_up_tokenization_spaces": False,
        "model_max_length": hf_config["max_position_embeddings"],
        "chat_template": CHATML_TEMPLATE,
    })
    return path


def _hf_config(arch: str, overrides: dict[str, Any], *, bos: int, eos: int, pad: int) -> dict:
    common = {
        "vocab_size": TOKENIZER_VOCAB_SIZE,
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "max_position_embeddings": MAX_POSITIONS,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "pad_token_id": pad,
        "torch_dtype": "float32",
    }
    if arch == "llama":
        config = {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            **common,
            "intermediate_size": 128,
            "num_key_value_heads": 2,
            "hidden_act": "silu",
            "rms_norm_eps": 1e-6,
            "rope_theta": 10000.0,
            "tie_word_embeddings": False,
            "attention_bias": False,
            "mlp_bias": False,
            **overrides,
        }
        config.setdefault("head_dim", config["hidden_size"] // config["num_attention_heads"])
        return config
    if arch == "opt":
        config = {
            "architectures": ["OPTForCausalLM"],
            "model_type": "opt",
            **common,
            "ffn_dim": 128,
            "activation_function": "relu",
            "do_layer_norm_before": True,
            "enable_bias": True,
            "layer_norm_elementwise_affine": True,
            "tie_word_embeddings": True,
            **overrides,
        }
        config.setdefault("word_embed_proj_dim", config["hidden_size"])
        return config
    raise ValueError(f"arch={arch!r} is not one of 'llama', 'opt'")


def _init_weights(model: torch.nn.Module, seed: int) -> None:
    # Wider than HF's 0.02 init so that logits are well separated: greedy tokens then do not
    # hinge on rounding differences between implementations.
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            if "norm" in name:
                param.fill_(1.0 if name.endswith("weight") else 0.0)
            elif param.dim() == 1:
                param.normal_(0.0, 0.02, generator=gen)
            elif "embed" in name:
                param.normal_(0.0, 1.0, generator=gen)
            else:
                param.normal_(0.0, 1.0 / math.sqrt(param.shape[1]), generator=gen)


@lru_cache(maxsize=1)
def _tokenizer_json() -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TOKENIZER_VOCAB_SIZE,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator([_CORPUS, _CODE], trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 0)]
    )
    return tokenizer.to_str()


def _write_json(file: Path, data: dict) -> None:
    file.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
