"""Llama 2/3, Mistral, Qwen2 (q/k/v bias) and Qwen3 (q/k RMSNorm): one decoder, GQA/MQA,
tied or untied embeddings. q/k/v and gate/up are fused Linears; HF names map onto them."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ember.attention import AttentionMetadata, attend
from ember.models.config import ModelArchConfig
from ember.models.layers import GatedMLP, RMSNorm, RotaryEmbedding, apply_rotary, make_embedding
from ember.models.weights import HFWeightMap

KVCache = tuple[torch.Tensor, torch.Tensor]


class LlamaAttention(nn.Module):
    def __init__(self, config: ModelArchConfig):
        super().__init__()
        self.num_heads = config.num_heads
        self.num_kv_heads = config.num_kv_heads
        self.head_dim = config.head_dim
        self.q_size = self.num_heads * self.head_dim
        self.kv_size = self.num_kv_heads * self.head_dim
        self.scale = self.head_dim**-0.5
        self.qkv_proj = nn.Linear(config.hidden_size, self.q_size + 2 * self.kv_size, bias=config.qkv_bias)
        self.o_proj = nn.Linear(self.q_size, config.hidden_size, bias=config.o_proj_bias)
        if config.qk_norm:
            self.q_norm = RMSNorm(self.head_dim, config.norm_eps)
            self.k_norm = RMSNorm(self.head_dim, config.norm_eps)
        else:
            self.q_norm = self.k_norm = None

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        kv_cache: KVCache | None,
        attn_meta: AttentionMetadata | None,
    ) -> torch.Tensor:
        lead = x.shape[:-1]
        q, k, v = self.qkv_proj(x).split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = q.view(*lead, self.num_heads, self.head_dim)
        k = k.view(*lead, self.num_kv_heads, self.head_dim)
        v = v.view(*lead, self.num_kv_heads, self.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        out = attend(q, k, v, kv_cache, attn_meta, self.scale)
        return self.o_proj(out.reshape(*lead, self.q_size))


class LlamaDecoderLayer(nn.Module):
    def __init__(self, config: ModelArchConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.norm_eps)
        self.self_attn = LlamaAttention(config)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.norm_eps)
        self.mlp = GatedMLP(
            config.hidden_size,
            config.intermediate_size,
            bias=config.mlp_bias,
            act=config.hidden_act,
        )

    def forward(self, x, cos, sin, kv_cache, attn_meta) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, kv_cache, attn_meta)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaModel(nn.Module):
    def __init__(self, config: ModelArchConfig):
        super().__init__()
        self.embed_tokens = make_embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(LlamaDecoderLayer(config) for _ in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.norm_eps)
        self.rotary_emb = RotaryEmbedding(config.head_dim, config.rope_theta, config.rope_scaling)


class LlamaForCausalLM(nn.Module):
    """Causal LM over the Llama family; parameter names follow HF except the fused ones."""

    def __init__(self, config: ModelArchConfig):
        super().__init__()
        self.config = config
        self.model = LlamaModel(config)
        if config.tie_word_embeddings:
            self.lm_head = None
        else:
            self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor | None = None,
        kv_caches: Sequence[KVCache] | None = None,
        attn_meta: AttentionMetadata | None = None,
    ) -> torch.Tensor:
        """Hidden states after the final norm.

        Paged mode: ``input_ids``/``positions`` ``[T]``, one ``(k_cache, v_cache)`` per layer,
        ``attn_meta`` for the step -> ``[T, hidden]``.
        Plain mode: ``input_ids`` ``[B, S]``, ``positions`` ``[B, S]`` or None (= arange),
        no cache -> ``[B, S, hidden]``.
        """
        assert (kv_caches is None) == (attn_meta is None), "paged mode needs caches and metadata"
        if positions is None:
            positions = torch.arange(input_ids.shape[-1], device=input_ids.device)
            positions = positions.expand(input_ids.shape)
        h = self.model.embed_tokens(input_ids)
        cos, sin = self.model.rotary_emb(positions, h.dtype)
        for i, layer in enumerate(self.model.layers):
            h = layer(h, cos, sin, None if kv_caches is None else kv_caches[i], attn_meta)
        return self.model.norm(h)

    @property
    def decoder_layers(self) -> nn.ModuleList:
        return self.model.layers

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """``[..., hidden]`` -> fp32 logits ``[..., vocab]``."""
        weight = self.model.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
        return F.linear(hidden, weight).float()

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Load ``(hf_name, tensor)`` pairs; raises ModelLoadError on unexpected, missing
        or mis-shaped weights."""
        tied = self.lm_head is None
        self._weight_map().load(
            weights,
            skip=lambda name: "rotary_emb.inv_freq" in name or (tied and name == "lm_head.weight"),
        )

    def hf_state_dict(self) -> dict[str, torch.Tensor]:
        """Parameters under their HF names (what ``save_pretrained`` writes)."""
        return self._weight_map().state_dict()

    def _weight_map(self) -> HFWeightMap:
        c = self.config
        q_rows, kv_rows = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
        return HFWeightMap(
            self,
            {
                "self_attn.qkv_proj": [
                    ("self_attn.q_proj", q_rows),
                    ("self_attn.k_proj", kv_rows),
                    ("self_attn.v_proj", kv_rows),
                ],
                "mlp.gate_up_proj": [
                    ("mlp.gate_proj", c.intermediate_size),
                    ("mlp.up_proj", c.intermediate_size),
                ],
            },
        )
