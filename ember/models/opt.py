"""OPT: learned positions (looked up at position + 2), biases, ReLU, pre-LN or post-LN
(``do_layer_norm_before=False``, as OPT-350m), project_in/out when the embedding width
differs from the hidden size. q/k/v are one fused Linear; HF names map onto it."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ember.attention import AttentionMetadata, attend
from ember.models.config import ModelArchConfig
from ember.models.layers import ACT_FNS, make_embedding
from ember.models.weights import HFWeightMap

KVCache = tuple[torch.Tensor, torch.Tensor]


class OPTAttention(nn.Module):
    def __init__(self, config: ModelArchConfig):
        super().__init__()
        self.num_heads = config.num_heads
        self.head_dim = config.head_dim
        self.scale = self.head_dim**-0.5
        hidden, bias = config.hidden_size, config.enable_bias
        self.qkv_proj = nn.Linear(hidden, 3 * hidden, bias=bias)
        self.out_proj = nn.Linear(hidden, hidden, bias=bias)

    def forward(self, x, kv_cache, attn_meta) -> torch.Tensor:
        lead = x.shape[:-1]
        q, k, v = (t.view(*lead, self.num_heads, self.head_dim) for t in self.qkv_proj(x).chunk(3, dim=-1))
        out = attend(q, k, v, kv_cache, attn_meta, self.scale)
        return self.out_proj(out.reshape(*lead, -1))


class OPTDecoderLayer(nn.Module):
    def __init__(self, config: ModelArchConfig):
        super().__init__()
        hidden, bias = config.hidden_size, config.enable_bias
        affine = config.layer_norm_elementwise_affine
        self.pre_ln = config.do_layer_norm_before
        self.self_attn = OPTAttention(config)
        self.self_attn_layer_norm = nn.LayerNorm(hidden, config.norm_eps, elementwise_affine=affine)
        self.fc1 = nn.Linear(hidden, config.intermediate_size, bias=bias)
        self.fc2 = nn.Linear(config.intermediate_size, hidden, bias=bias)
        self.final_layer_norm = nn.LayerNorm(hidden, config.norm_eps, elementwise_affine=affine)
        self.act = ACT_FNS[config.hidden_act]

    def forward(self, x, kv_cache, attn_meta) -> torch.Tensor:
        if self.pre_ln:
            x = x + self.self_attn(self.self_attn_layer_norm(x), kv_cache, attn_meta)
            return x + self.fc2(self.act(self.fc1(self.final_layer_norm(x))))
        x = self.self_attn_layer_norm(x + self.self_attn(x, kv_cache, attn_meta))
        return self.final_layer_norm(x + self.fc2(self.act(self.fc1(x))))


class OPTDecoder(nn.Module):
    def __init__(self, config: ModelArchConfig):
        super().__init__()
        hidden, embed_dim = config.hidden_size, config.embed_dim
        self.embed_tokens = make_embedding(config.vocab_size, embed_dim)
        self.embed_positions = make_embedding(config.max_position_embeddings + config.position_offset, hidden)
        projected = embed_dim != hidden
        self.project_in = nn.Linear(embed_dim, hidden, bias=False) if projected else None
        self.project_out = nn.Linear(hidden, embed_dim, bias=False) if projected else None
        self.layers = nn.ModuleList(OPTDecoderLayer(config) for _ in range(config.num_layers))
        self.final_layer_norm = (
            nn.LayerNorm(hidden, config.norm_eps, elementwise_affine=config.layer_norm_elementwise_affine)
            if config.has_final_layer_norm
            else None
        )


class _OPTModel(nn.Module):
    # NOTE: only here so that parameter names carry HF's `model.decoder.` prefix.
    def __init__(self, config: ModelArchConfig):
        super().__init__()
        self.decoder = OPTDecoder(config)


class OPTForCausalLM(nn.Module):
    """OPT causal LM; same interface as ``LlamaForCausalLM``."""

    def __init__(self, config: ModelArchConfig):
        super().__init__()
        self.config = config
        self.model = _OPTModel(config)
        if config.tie_word_embeddings:
            self.lm_head = None
        else:
            self.lm_head = nn.Linear(config.embed_dim, config.vocab_size, bias=False)

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor | None = None,
        kv_caches: Sequence[KVCache] | None = None,
        attn_meta: AttentionMetadata | None = None,
    ) -> torch.Tensor:
        """Paged mode: ``[T]`` ids/positions + caches + metadata -> ``[T, embed_dim]``.
        Plain mode: ``[B, S]`` ids, positions ``[B, S]`` or None -> ``[B, S, embed_dim]``.
        (``embed_dim`` is ``word_embed_proj_dim``; it equals ``hidden_size`` for most OPTs.)"""
        assert (kv_caches is None) == (attn_meta is None), "paged mode needs caches and metadata"
        decoder = self.model.decoder
        if positions is None:
            positions = torch.arange(input_ids.shape[-1], device=input_ids.device)
            positions = positions.expand(input_ids.shape)
        h = decoder.embed_tokens(input_ids)
        if decoder.project_in is not None:
            h = decoder.project_in(h)
        h = h + decoder.embed_positions(positions + self.config.position_offset)
        for i, layer in enumerate(decoder.layers):
            h = layer(h, None if kv_caches is None else kv_caches[i], attn_meta)
        if decoder.final_layer_norm is not None:
            h = decoder.final_layer_norm(h)
        if decoder.project_out is not None:
            h = decoder.project_out(h)
        return h

    @property
    def decoder_layers(self) -> nn.ModuleList:
        return self.model.decoder.layers

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """``[..., embed_dim]`` -> fp32 logits ``[..., vocab]``."""
        embed = self.model.decoder.embed_tokens
        weight = embed.weight if self.lm_head is None else self.lm_head.weight
        return F.linear(hidden, weight).float()

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Load ``(hf_name, tensor)`` pairs; accepts the ``decoder.*`` names of the original
        facebook/opt checkpoints. Raises ModelLoadError on bad names or shapes."""
        tied = self.lm_head is None
        self._weight_map().load(
            weights,
            rename=lambda name: "model." + name if name.startswith("decoder.") else name,
            skip=lambda name: tied and name == "lm_head.weight",
        )

    def hf_state_dict(self) -> dict[str, torch.Tensor]:
        """Parameters under their HF names (what ``save_pretrained`` writes)."""
        return self._weight_map().state_dict()

    def _weight_map(self) -> HFWeightMap:
        hidden = self.config.hidden_size
        parts = [(f"self_attn.{p}_proj", hidden) for p in ("q", "k", "v")]
        return HFWeightMap(self, {"self_attn.qkv_proj": parts})
