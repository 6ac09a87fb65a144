"""The one attention contract (see DESIGN.md): every query token carries an absolute
position and belongs to one request; it sees the request's keys with
``pos(k) <= pos(q)`` and, for tree tokens of this step, only itself and its ancestors."""

from ember.attention.metadata import AttentionMetadata, build_attention_metadata
from ember.attention.reference import attend

__all__ = ["AttentionMetadata", "attend", "build_attention_metadata"]
