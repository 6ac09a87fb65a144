"""Engine logprobs (``TokenLogprobs``: token id, logprob, top alternatives) in OpenAI's two
shapes: the legacy completions one (parallel lists) and the chat one (a list of objects)."""

from __future__ import annotations

from functools import lru_cache

from ember.core.sampling import TokenLogprobs
from ember.server.protocol import ChatLogprobs, ChatTokenLogprob, CompletionLogprobs, TopLogprob


class TokenStrings:
    """Token id -> the text of that token alone (as vLLM returns it; a token that is part of a
    multi-byte character decodes to U+FFFD)."""

    def __init__(self, tokenizer) -> None:
        self._tokenizer = tokenizer
        self.text = lru_cache(maxsize=65536)(self._text)

    def _text(self, token_id: int) -> str:
        if self._tokenizer is None:
            return f"token_id:{token_id}"
        return self._tokenizer.decode([token_id], skip_special_tokens=False)

    def completion_logprobs(self, entries: list[TokenLogprobs], text_offset: int) -> CompletionLogprobs:
        """``text_offset``: where the first token's text starts in the choice's text."""
        out = CompletionLogprobs()
        offset = text_offset
        for entry in entries:
            token = self.text(entry.token_id)
            out.tokens.append(token)
            out.token_logprobs.append(entry.logprob)
            top = {self.text(t): lp for t, lp in entry.top_logprobs} if entry.top_logprobs else {}
            top.setdefault(token, entry.logprob)
            out.top_logprobs.append(top)
            out.text_offset.append(offset)
            offset += len(token)
        return out

    def chat_logprobs(self, entries: list[TokenLogprobs]) -> ChatLogprobs:
        content = []
        for entry in entries:
            token = self.text(entry.token_id)
            top = [
                TopLogprob(token=self.text(t), logprob=lp, bytes=list(self.text(t).encode()))
                for t, lp in entry.top_logprobs
            ]
            content.append(
                ChatTokenLogprob(token=token, logprob=entry.logprob, bytes=list(token.encode()), top_logprobs=top)
            )
        return ChatLogprobs(content=content)
