"""End to end: the official `openai` client against a live `mimo-engine serve` running the real smollm2-135m."""

import concurrent.futures
import time

import httpx
import openai
import pytest
from mimo_core.testing import TEST_MODEL as MODEL

pytestmark = pytest.mark.model

MAX_BATCH, MAX_QUEUE = 3, 1  # as conftest's shared `server` is started: small, so that few requests fill the queue
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=120)


def chat(client, **kwargs):
    return client.chat.completions.create(model=MODEL, messages=kwargs.pop("messages", QUESTION), **kwargs)


@pytest.fixture(scope="module")
def greedy(client):
    """One greedy reply that several tests compare against (each request costs a prefill on 2 cores), its prompt
    computed whole: blocks another run left in the disk tier would leave only a tail to compute, whose attention BLAS
    sums in another order, and smollm2-135m's greedy tokens follow a last-bit difference."""
    return chat(client, max_tokens=8, temperature=0,
                extra_body={"mimo": {"precision": {"policy": "native"}, "cache": {"enabled": False}}})


def test_chat_answers_with_usage_and_mimo_figures(greedy):
    reply = greedy
    choice = reply.choices[0]
    # what llama.cpp (llama-cpp-python 0.3.36) answers greedily on the same Q4_1 GGUF, token for token: native is the
    # file's own precision now ("Paris" came only from the Q8_0 it was re-quantized to before)
    assert choice.message.content.startswith("L'Étoile, la Mar") and choice.finish_reason in {"stop", "length"}
    assert reply.usage.prompt_tokens > 5 and 0 < reply.usage.completion_tokens <= 8
    mimo = reply.model_extra["mimo"]
    assert mimo["model"] == MODEL and mimo["prompt_tokens"] == reply.usage.prompt_tokens
    assert mimo["prefill_s"] > 0 and mimo["decode_s"] > 0 and mimo["batch_sizes"]
    precision = mimo["precision"]
    assert precision["policy"] == "native" and precision["weight_bytes"] > 0 and 4 < precision["bits_per_weight"] < 33
    assert mimo["speculation"]["method"] == "none" and mimo["speculation"]["verification_passes"] == 0
    cache = mimo["cache"]
    assert not cache["enabled"] and cache["cached_tokens"] == 0
    assert cache["prefilled_tokens"] == reply.usage.prompt_tokens
    assert reply.usage.prompt_tokens_details.cached_tokens == cache["cached_tokens"]
    assert 0 < mimo["time_to_first_token_s"] <= mimo["duration_s"] and mimo["schema"] == "mimo.engine-report/1"


def test_seed_repeats_and_stop_cuts(client, greedy):
    first, second = (chat(client, max_tokens=5, temperature=1.0, seed=11) for _ in range(2))
    assert first.choices[0].message.content == second.choices[0].message.content
    word = greedy.choices[0].message.content.split(" ")[1]  # a word of the greedy reply: the text stops before it
    cut = chat(client, max_tokens=8, temperature=0, stop=[word],
               extra_body={"mimo": {"cache": {"enabled": False}}}).choices[0]  # computed whole, as `greedy`
    assert cut.finish_reason == "stop" and cut.message.content == greedy.choices[0].message.content.split(word)[0]


def test_streaming_matches_the_plain_reply(client, greedy):
    # both with the cache on: the second starts from the blocks the first left and computes the same tail, where a
    # comparison with the fixture (prompt computed whole) would compare two summation orders
    plain = chat(client, max_tokens=8, temperature=0).choices[0].message.content
    chunks = list(chat(client, max_tokens=8, temperature=0, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in {"stop", "length"}
    assert chunks[-1].usage.completion_tokens > 0 and chunks[-1].model_extra["mimo"]["model"] == MODEL


def test_a_stream_cut_after_a_few_tokens_still_counts_its_tokens(client, server):
    def counted(name: str) -> float:
        return float(_metric(httpx.get(f"{server.url}/metrics").text, name))

    prompt_before, generated_before = counted("mimo_engine_prompt_tokens_total"), counted(
        "mimo_engine_completion_tokens_total")
    stream = chat(client, max_tokens=2000, temperature=0, stream=True,
                  messages=[{"role": "user", "content": "Count from 1 to 1000, one number a line."}])
    received = 0
    for chunk in stream:
        received += bool(chunk.choices and chunk.choices[0].delta.content)
        if received == 5:
            break
    stream.close()  # the client hangs up
    deadline = time.monotonic() + 20
    while _metric(httpx.get(f"{server.url}/metrics").text, "mimo_engine_running") != "0":
        assert time.monotonic() < deadline, "the abandoned sequence is still decoding"
        time.sleep(0.2)
    assert counted("mimo_engine_completion_tokens_total") - generated_before >= received
    assert counted("mimo_engine_prompt_tokens_total") - prompt_before > 10  # the prompt it prefilled


def test_a_client_that_leaves_frees_its_sequence(client, server):
    stream = client.completions.create(model=MODEL, prompt="1, 2, 3, 4,", max_tokens=2000, temperature=0, stream=True)
    next(iter(stream))
    stream.close()
    deadline = time.monotonic() + 5  # far less than 2000 tokens take
    while _metric(httpx.get(f"{server.url}/metrics").text, "mimo_engine_running") != "0":
        assert time.monotonic() < deadline, "the abandoned sequence is still decoding"
        time.sleep(0.2)


def test_n_choices_decode_together(client):
    reply = chat(client, max_tokens=4, temperature=1.0, seed=5, n=3)
    assert sorted(c.index for c in reply.choices) == [0, 1, 2]
    assert all(c.message.content for c in reply.choices)
    assert 3 in reply.model_extra["mimo"]["batch_sizes"]


def test_chat_logprobs_and_top_logprobs(client):
    reply = chat(client, max_tokens=4, temperature=0, logprobs=True, top_logprobs=3)
    content = reply.choices[0].logprobs.content
    assert len(content) in {reply.usage.completion_tokens, reply.usage.completion_tokens - 1}  # an EOS has no entry
    for entry in content:
        assert entry.logprob <= 0 and len(entry.top_logprobs) == 3
        assert entry.top_logprobs[0].token == entry.token  # greedy picks the most likely token
    assert "".join(e.token for e in content).startswith(reply.choices[0].message.content[:3])


def score(client, text: str):
    return client.completions.create(model=MODEL, prompt=text, max_tokens=0, echo=True, logprobs=1)


def test_completions_echo_scores_the_prompt(client):
    right, wrong = score(client, "The capital of France is Paris."), score(client, "The capital of France is Berlin.")
    choice = right.choices[0]
    assert choice.text == "The capital of France is Paris."
    logprobs = choice.logprobs
    assert logprobs.token_logprobs[0] is None and logprobs.top_logprobs[0] is None
    assert all(lp <= 0 for lp in logprobs.token_logprobs[1:])
    assert "".join(logprobs.tokens) == choice.text and logprobs.text_offset[0] == 0
    assert logprobs.text_offset == sorted(logprobs.text_offset)
    assert sum(right.choices[0].logprobs.token_logprobs[1:]) > sum(wrong.choices[0].logprobs.token_logprobs[1:])
    assert right.usage.completion_tokens == 0


def test_completions_continue_a_list_of_prompts(client):
    reply = client.completions.create(
        model=MODEL, prompt=["The capital of France is", "1, 2, 3,"], max_tokens=2, temperature=0
    )
    assert [c.index for c in reply.choices] == [0, 1]
    assert "Paris" in reply.choices[0].text and reply.choices[1].text.strip().startswith("4")


def test_concurrent_requests_are_batched(client, server):
    with concurrent.futures.ThreadPoolExecutor(MAX_BATCH) as pool:
        replies = list(pool.map(lambda _: chat(client, max_tokens=6, temperature=0), range(MAX_BATCH)))
    assert max(max(r.model_extra["mimo"]["batch_sizes"]) for r in replies) > 1


def _metric(text: str, name: str) -> str:
    return next(line.split()[-1] for line in text.splitlines() if line.startswith(f'{name}{{model="{MODEL}"}}'))


def test_overload_gets_429_with_retry_after(client):
    def attempt(_):
        try:
            return chat(client, max_tokens=4, temperature=0)
        except openai.RateLimitError as exc:
            return exc

    attempts = MAX_BATCH + MAX_QUEUE + 3
    with concurrent.futures.ThreadPoolExecutor(attempts) as pool:
        outcomes = list(pool.map(attempt, range(attempts)))
    refused = [o for o in outcomes if isinstance(o, openai.RateLimitError)]
    served = [o for o in outcomes if not isinstance(o, Exception)]
    assert refused and len(served) >= MAX_BATCH
    assert int(refused[0].response.headers["retry-after"]) >= 1
    assert refused[0].body["type"] == "rate_limit_error"


@pytest.mark.parametrize(
    "body, param",
    [
        ({"messages": QUESTION, "response_format": {"type": "json_object"}}, "response_format"),
        ({"messages": QUESTION, "tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ({"messages": QUESTION, "tool_choice": "required"}, "tool_choice"),
        ({"messages": QUESTION, "parallel_tool_calls": False}, "parallel_tool_calls"),
        ({"messages": QUESTION, "functions": [{"name": "f"}]}, "functions"),
        ({"messages": QUESTION, "logit_bias": {"50256": -100}}, "logit_bias"),
        ({"messages": QUESTION, "presence_penalty": 0.5}, "presence_penalty"),
        ({"messages": QUESTION, "frequency_penalty": 1}, "frequency_penalty"),
        ({"messages": QUESTION, "user": "alice"}, "user"),
        ({"messages": QUESTION, "service_tier": "flex"}, "service_tier"),
        ({"messages": QUESTION, "min_p": 0.1}, "min_p"),  # vLLM's, not done here
        ({"messages": QUESTION, "echo": True}, "echo"),  # a parameter of the other endpoint
        ({"messages": [{"role": "user", "content": "hi", "name": "alice"}]}, "messages[0].name"),
        ({"messages": QUESTION, "stream_options": {"include_obfuscation": True}}, "stream_options"),
        ({"messages": QUESTION, "temperature": -1}, "temperature"),
        ({"messages": []}, "messages"),
        ({}, "messages"),
        ({"messages": QUESTION, "top_logprobs": 2}, "top_logprobs"),
        ({"messages": QUESTION, "mimo": "fast"}, "mimo"),
        ({"messages": QUESTION, "mimo": {"cache": {"enabled": False, "pin": True}}}, "mimo.cache"),
        ({"messages": QUESTION, "mimo": {"speculation": {"method": "medusa"}}}, "mimo.speculation.method"),
        ({"messages": QUESTION, "mimo": {"speculation": {"method": "draft-model"}}}, "mimo.speculation.method"),
        ({"messages": QUESTION, "mimo": {"speculation": {"method": "ngram", "block": 17}}}, "mimo.speculation"),
    ],
)
def test_bad_input_is_400_in_openai_shape(server, body, param):
    response = httpx.post(f"{server.url}/v1/chat/completions", json={"model": MODEL, **body})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param and error["message"]


@pytest.mark.parametrize("field, value", [("suffix", "!"), ("best_of", 3), ("logit_bias", {"1": 5}),
                                          ("presence_penalty", -1.0), ("user", "u"), ("logprobs_mode", "raw")])
def test_completions_refuse_what_they_do_not_do(server, field, value):
    body = {"model": MODEL, "prompt": "1, 2,", "max_tokens": 1, field: value}
    response = httpx.post(f"{server.url}/v1/completions", json=body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == field and f"`{field}`" in error["message"]
    assert error["code"] in {"unsupported_parameter", "unknown_parameter"}


def test_values_that_ask_for_nothing_more_are_accepted(client):
    reply = chat(client, max_tokens=1, temperature=0, response_format={"type": "text"}, tools=[], tool_choice="none",
                 logit_bias={}, presence_penalty=0, frequency_penalty=0.0, store=False, user=None)
    assert reply.choices[0].finish_reason in {"stop", "length"}
    scored = client.completions.create(model=MODEL, prompt="1, 2,", max_tokens=1, best_of=1, suffix="", temperature=0)
    assert scored.choices[0].text


def test_json_output_asked_through_the_client_is_refused_not_ignored(client):
    with pytest.raises(openai.BadRequestError) as info:
        chat(client, max_tokens=4, response_format={"type": "json_object"})
    assert info.value.body["param"] == "response_format" and "JSON" in info.value.body["message"]


def test_bad_input_through_the_client(client):
    with pytest.raises(openai.BadRequestError):
        chat(client, temperature=-1)


def test_unknown_model_is_404(client):
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="no-such-model", messages=QUESTION)
    assert info.value.body["code"] == "model_not_found"


def test_streamed_completions_end_with_usage_and_mimo(client):
    chunks = list(client.completions.create(model=MODEL, prompt="1, 2, 3,", max_tokens=3, temperature=0, stream=True,
                                            stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices).strip().startswith("4")
    assert chunks[-1].usage.completion_tokens == 3 and chunks[-1].model_extra["mimo"]["completion_tokens"] == 3


def test_speculation_keeps_greedy_output_and_reports_its_work(client, server):
    def complete(**mimo):
        return client.completions.create(model=MODEL, prompt="1, 2, 3, 1, 2, 3, 1, 2,", max_tokens=12, temperature=0,
                                         extra_body={"mimo": mimo} if mimo else None)

    plain = complete()
    fast = complete(speculation={"method": "ngram", "block": 4, "adaptive": False})
    assert fast.choices[0].text == plain.choices[0].text
    report = fast.model_extra["mimo"]["speculation"]
    assert report["method"] == "ngram" and report["verification_passes"] > 0 and report["accepted_tokens"] > 0
    assert report["mean_accepted_length"] > 1.0
    metrics = httpx.get(f"{server.url}/metrics").text
    assert float(_metric(metrics, "mimo_engine_speculation_drafted_tokens_total")) >= report["drafted_tokens"]
    assert float(_metric(metrics, "mimo_engine_speculation_accepted_tokens_total")) >= report["accepted_tokens"]


def test_models_health_and_metrics(client, server):
    assert [m.id for m in client.models.list()] == [MODEL]  # what it serves, not the whole registry
    health = httpx.get(f"{server.url}/health").json()
    assert {k: health[k] for k in ("status", "pid", "models_loaded", "models_served", "busy")} == {
        "status": "ok", "pid": server.process.pid, "models_loaded": [MODEL], "models_served": [MODEL], "busy": False}
    assert health["models"][MODEL]["state"] == "ready" and health["models"][MODEL]["seconds"] > 0  # its load time
    assert health["precision_policies"] is None and health["threads"] is None  # the engine's defaults
    metrics = httpx.get(f"{server.url}/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    assert float(_metric(metrics.text, "mimo_engine_requests_total")) >= 1
    assert float(_metric(metrics.text, "mimo_engine_completion_tokens_total")) >= 1
    for name, kind in [("waiting", "gauge"), ("running", "gauge"), ("tokens_per_s", "gauge"),
                       ("kv_blocks_used", "gauge"), ("kv_blocks_free", "gauge"), ("prefix_hit_rate", "gauge"),
                       ("prompt_tokens_total", "counter"), ("cache_cached_tokens_total", "counter"),
                       ("time_to_first_token_s", "histogram"), ("inter_token_latency_s", "histogram"),
                       ("duration_s", "histogram"), ("step_tokens", "histogram")]:
        assert f"# TYPE mimo_engine_{name} {kind}" in metrics.text
    assert float(_metric(metrics.text, "mimo_engine_kv_blocks_free")) > 0
    assert 1 <= float(_metric(metrics.text, "mimo_engine_duration_s_count")) <= float(
        _metric(metrics.text, "mimo_engine_requests_total"))  # finished requests, of those accepted


LONG = [{"role": "user", "content": "Here is a list of fruit: apple, banana, cherry, date, elderberry, fig, grape, "
                                    "honeydew, kiwi, lemon, mango, nectarine, orange, papaya, quince. Which is first?"}]


def test_a_repeated_prompt_reuses_its_blocks_and_moves_its_logits_only_by_rounding(client):
    def ask(enabled: bool):
        return chat(client, messages=LONG, max_tokens=6, temperature=0, logprobs=True, top_logprobs=2,
                    extra_body={"mimo": {"cache": {"enabled": enabled}}})

    first, reused, off = ask(True), ask(True), ask(False)
    prompt = first.usage.prompt_tokens
    assert reused.model_extra["mimo"]["cache"]["cached_tokens"] == (prompt - 1) // 16 * 16 > 0
    assert reused.usage.prompt_tokens_details.cached_tokens == reused.model_extra["mimo"]["cache"]["cached_tokens"]
    assert off.usage.prompt_tokens_details.cached_tokens == 0 and off.model_extra["mimo"]["cache"]["enabled"] is False
    # the same computation gives the same tokens (how much `first` reuses depends on what earlier requests left)
    cached = [r.model_extra["mimo"]["cache"]["cached_tokens"] for r in (first, reused, off)]
    assert all(r.choices[0].message.content == first.choices[0].message.content
               for r, n in zip((reused, off), cached[1:]) if n == cached[0])
    # without reuse the whole prompt is one prefill; with it, the rest is a chunk of its own, whose attention BLAS sums
    # in an order that follows its shape, so an int8 code rounds apart here and there and a near tie may go either
    # way (this prompt's first two candidates are 0.05-0.2 nats apart): the first token's candidates are the same,
    # their log-probabilities within 0.3 nats (measured: 0.02-0.16 across engine versions)
    candidates = [{t.token: t.logprob for t in r.choices[0].logprobs.content[0].top_logprobs} for r in (reused, off)]
    assert set(candidates[0]) == set(candidates[1])
    assert all(abs(candidates[0][token] - candidates[1][token]) < 0.3 for token in candidates[0])


def test_n_choices_prefill_their_prompt_once(client):
    reply = chat(client, messages=LONG, max_tokens=3, temperature=1.0, seed=3, n=3,
                 extra_body={"mimo": {"cache": {"enabled": False}}})
    cache = reply.model_extra["mimo"]["cache"]
    assert cache["prefilled_tokens"] == reply.usage.prompt_tokens and cache["cached_tokens"] == 0
