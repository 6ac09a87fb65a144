"""/metrics (Prometheus), /tokenize, /detokenize and the served OpenAPI spec."""

from server_util import MODEL_NAME, metric, wait_idle


def test_metrics_count_latencies_statuses_and_cache(http):
    wait_idle(http)
    names = (
        "ember:time_to_first_token_seconds_count",
        "ember:time_per_output_token_seconds_count",
        "ember:inter_token_latency_seconds_count",
        "ember:e2e_request_latency_seconds_count",
        "ember:prompt_tokens_total",
        "ember:generation_tokens_total",
    )
    before = {name: metric(http, name) for name in names}
    bad_before = metric(http, 'ember:http_requests_total{endpoint="/v1/completions",status="400"}')
    prompt = "The server keeps the keys and values of every token it has seen in a paged cache " * 3
    body = {"model": MODEL_NAME, "prompt": prompt, "max_tokens": 20, "ignore_eos": True}
    hits_before = metric(http, "ember:prefix_cache_hits")
    for _ in range(2):  # the second is a prefix-cache hit
        assert http.post("/v1/completions", json=body).status_code == 200
    assert http.post("/v1/completions", json={**body, "n": -1}).status_code == 400
    after = {name: metric(http, name) for name in names}
    assert all(after[n] - before[n] >= 2 for n in names[:2] + names[3:4]), (before, after)
    # NOTE: one ITL sample per output the server receives; a busy loop may get several tokens at once
    assert after["ember:inter_token_latency_seconds_count"] > before["ember:inter_token_latency_seconds_count"]
    assert after["ember:generation_tokens_total"] - before["ember:generation_tokens_total"] == 40
    assert metric(http, 'ember:http_requests_total{endpoint="/v1/completions",status="400"}') == bad_before + 1
    assert metric(http, "ember:prefix_cache_hits") > hits_before
    assert 0 < metric(http, "ember:prefix_cache_hit_rate") <= 1
    text = http.get("/metrics").text
    for gauge in ("ember:num_requests_running", "ember:num_requests_waiting", "ember:kv_cache_usage_perc"):
        assert f"\n{gauge} " in text
    assert 0 <= metric(http, "ember:kv_cache_usage_perc") <= 1


def test_tokenize_detokenize_round_trip(http):
    tokens = http.post("/tokenize", json={"prompt": "hello world", "add_special_tokens": False}).json()
    assert tokens["count"] == len(tokens["tokens"]) > 0 and tokens["max_model_len"] == 512
    text = http.post("/detokenize", json={"model": MODEL_NAME, "tokens": tokens["tokens"]}).json()["prompt"]
    assert text == "hello world"
    chat = http.post("/tokenize", json={"messages": [{"role": "user", "content": "hi"}]}).json()
    rendered = http.post("/detokenize", json={"tokens": chat["tokens"]}).json()["prompt"]
    assert "hi" in rendered and chat["count"] > tokens["count"]


def test_openapi_spec_lists_the_api(http):
    spec = http.get("/openapi.json").json()
    assert {
        "/v1/completions",
        "/v1/chat/completions",
        "/v1/models",
        "/tokenize",
        "/detokenize",
        "/health",
        "/metrics",
    } <= set(spec["paths"])
    assert not any(path.startswith("/debug") for path in spec["paths"])
    assert "400" in spec["paths"]["/v1/completions"]["post"]["responses"]
