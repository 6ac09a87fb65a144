"""The official openai client (sync and async, streaming and not) against `ember serve`."""

import asyncio

import pytest
from server_util import MODEL_NAME, wait_idle

GREEDY = {"temperature": 0.0, "extra_body": {"ignore_eos": True}}
CHAT = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name a fruit."}]


def test_models_lists_the_served_name(client):
    (model,) = client.models.list().data
    assert model.id == MODEL_NAME and model.owned_by == "ember"
    assert client.models.retrieve(MODEL_NAME).id == MODEL_NAME


def test_completion_stream_equals_non_stream(client, http):
    full = client.completions.create(model=MODEL_NAME, prompt="def fibonacci(n):", max_tokens=20, **GREEDY)
    (choice,) = full.choices
    assert choice.finish_reason == "length"
    assert full.usage.completion_tokens == 20 and full.usage.total_tokens == full.usage.prompt_tokens + 20
    chunks = list(
        client.completions.create(
            model=MODEL_NAME,
            prompt="def fibonacci(n):",
            max_tokens=20,
            stream=True,
            stream_options={"include_usage": True},
            logprobs=0,
            **GREEDY,
        )
    )
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    tokens = [t for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.tokens]
    assert text == choice.text and len(tokens) == 20
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 20
    assert all(c.usage is None for c in chunks[:-1])
    wait_idle(http)


def test_chat_stream_equals_non_stream(client, http):
    full = client.chat.completions.create(model=MODEL_NAME, messages=CHAT, max_completion_tokens=16, **GREEDY)
    message = full.choices[0].message
    assert message.role == "assistant" and full.usage.completion_tokens == 16
    stream = client.chat.completions.create(
        model=MODEL_NAME,
        messages=CHAT,
        max_tokens=16,
        stream=True,
        stream_options={"include_usage": True},
        **GREEDY,
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == message.content
    assert chunks[-1].usage.prompt_tokens == full.usage.prompt_tokens
    tokenized = http.post("/tokenize", json={"messages": CHAT}).json()
    assert tokenized["count"] == full.usage.prompt_tokens


def test_n_choices_seeded_sampling_and_penalties(client):
    def sample(seed):
        return client.completions.create(
            model=MODEL_NAME,
            prompt="The weather",
            max_tokens=12,
            n=3,
            temperature=1.0,
            top_p=0.9,
            seed=seed,
            presence_penalty=0.5,
            frequency_penalty=0.5,
            extra_body={"top_k": 50, "min_p": 0.01, "ignore_eos": True},
        )

    first, again, other = sample(7), sample(7), sample(8)
    assert [c.index for c in first.choices] == [0, 1, 2]
    texts = [c.text for c in first.choices]
    assert texts == [c.text for c in again.choices] and len(set(texts)) > 1
    assert texts != [c.text for c in other.choices]
    assert first.usage.completion_tokens == 36


def test_batched_and_token_id_prompts(client, http):
    ids = http.post("/tokenize", json={"prompt": "hello world"}).json()["tokens"]
    other = http.post("/tokenize", json={"prompt": "import os"}).json()["tokens"]
    response = client.completions.create(model=MODEL_NAME, prompt=[ids, other], n=2, max_tokens=4, **GREEDY)
    assert sorted(c.index for c in response.choices) == [0, 1, 2, 3]
    by_text = client.completions.create(model=MODEL_NAME, prompt="hello world", max_tokens=4, **GREEDY)
    assert response.choices[0].text == by_text.choices[0].text
    assert response.usage.completion_tokens == 16


def test_stop_string_and_logprobs(client):
    base = client.completions.create(model=MODEL_NAME, prompt="for i in range(10):", max_tokens=30, **GREEDY)
    text = base.choices[0].text
    stop = text[10:13]
    cut = client.completions.create(
        model=MODEL_NAME, prompt="for i in range(10):", max_tokens=30, stop=[stop], **GREEDY
    ).choices[0]
    assert cut.text == text[: text.find(stop)] and cut.finish_reason == "stop"
    streamed = client.completions.create(
        model=MODEL_NAME, prompt="for i in range(10):", max_tokens=30, stop=stop, stream=True, **GREEDY
    )
    assert "".join(c.choices[0].text for c in streamed) == cut.text
    chat = client.chat.completions.create(
        model=MODEL_NAME, messages=CHAT, max_tokens=5, logprobs=True, top_logprobs=3, **GREEDY
    )
    entries = chat.choices[0].logprobs.content
    assert len(entries) == 5 and all(len(e.top_logprobs) == 3 for e in entries)
    assert all(e.logprob <= 0 and e.top_logprobs[0].logprob >= e.logprob for e in entries)


def test_async_client_streams_concurrently(async_client):
    async def one(i):
        stream = await async_client.chat.completions.create(
            model=MODEL_NAME,
            messages=[{"role": "user", "content": f"count to {i}"}],
            max_tokens=6 + i,
            stream=True,
            stream_options={"include_usage": True},
            **GREEDY,
        )
        usage = None
        async for chunk in stream:
            usage = chunk.usage or usage
        return usage.completion_tokens

    async def main():
        plain = await async_client.completions.create(model=MODEL_NAME, prompt="x", max_tokens=3, **GREEDY)
        return plain.usage.completion_tokens, await asyncio.gather(*(one(i) for i in range(8)))

    plain, counts = asyncio.run(main())
    assert plain == 3 and counts == [6 + i for i in range(8)]


def test_echo_prepends_the_prompt(client):
    out = client.completions.create(model=MODEL_NAME, prompt="abc", max_tokens=3, echo=True, **GREEDY)
    assert out.choices[0].text.startswith("abc")


@pytest.mark.parametrize("endpoint", ["completions", "chat"])
def test_client_side_errors_raise_typed_exceptions(client, endpoint):
    import openai

    with pytest.raises(openai.BadRequestError) as info:
        if endpoint == "completions":
            client.completions.create(model=MODEL_NAME, prompt="x", max_tokens=10_000)
        else:
            client.chat.completions.create(model=MODEL_NAME, messages=CHAT, temperature=-1)
    assert info.value.status_code == 400
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="no-such-model", prompt="x", max_tokens=1)
