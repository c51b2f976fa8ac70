"""The client against a live local HTTP server speaking the OpenAI API (a small one in this file)."""

import asyncio
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import openai
import pytest

from mimo_core.client import LLMClient, StopStream
from mimo_core.extensions import MimoRequest, PrecisionRequest
from mimo_core.settings import Settings

KEY = "sk-test-never-printed"


class OpenAIHandler(BaseHTTPRequestHandler):
    """Answers /v1/chat/completions, /v1/completions and /v1/models like an OpenAI server would."""

    def log_message(self, *args):
        pass

    def _send(self, status, body, headers=()):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self.server.seen.append(("GET", self.path, {k.lower(): v for k, v in self.headers.items()}, None))
        self._send(200, {"object": "list", "data": [{"id": "m1", "object": "model", "created": 0, "owned_by": "t"}]})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.seen.append(("POST", self.path, {k.lower(): v for k, v in self.headers.items()}, body))
        if self.server.failures_left > 0:
            self.server.failures_left -= 1
            return self._send(503, {"error": {"message": "busy", "type": "server_error"}}, [("Retry-After", "0")])
        time.sleep(self.server.delay_s)
        mimo = {"echo": body.get("mimo")}
        if self.path.endswith("/completions") and "chat" not in self.path:
            toks = body["prompt"].split(" ")
            return self._send(200, {
                "id": "c", "object": "text_completion", "created": 0, "model": body["model"],
                "choices": [{"index": 0, "text": body["prompt"], "finish_reason": "length",
                             "logprobs": {"tokens": toks, "token_logprobs": [None] + [-1.0] * (len(toks) - 1),
                                          "top_logprobs": [None] + [{t: -1.0} for t in toks[1:]],
                                          "text_offset": list(range(len(toks)))}}],
                "usage": {"prompt_tokens": len(toks), "completion_tokens": 0, "total_tokens": len(toks)},
                "mimo": mimo})
        n = body.get("n", 1)
        if body.get("stream"):
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            for piece in ["The answer", " is", " 96."]:
                chunk = {"id": "s", "object": "chat.completion.chunk", "created": 0, "model": body["model"],
                         "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}
                self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
            final = {"id": "s", "object": "chat.completion.chunk", "created": 0, "model": body["model"],
                     "choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10},
                     "mimo": mimo}
            self.wfile.write(f"data: {json.dumps(final)}\n\ndata: [DONE]\n\n".encode())
            return
        logprobs = {"content": [{"token": "96", "logprob": -0.1, "bytes": [57, 54],
                                 "top_logprobs": [{"token": "96", "logprob": -0.1, "bytes": [57, 54]},
                                                  {"token": "69", "logprob": -2.5, "bytes": [54, 57]}]}]}
        self._send(200, {
            "id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
            "choices": [{"index": i, "message": {"role": "assistant", "content": f"answer {i}"},
                         "finish_reason": "stop", "logprobs": logprobs if body.get("logprobs") else None}
                        for i in range(n)],
            "usage": {"prompt_tokens": 12, "completion_tokens": 2 * n, "total_tokens": 12 + 2 * n},
            "mimo": mimo})


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), OpenAIHandler)
    httpd.seen, httpd.failures_left, httpd.delay_s = [], 0, 0.0
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()


def _client(httpd, **overrides):
    settings = Settings(base_url=f"http://127.0.0.1:{httpd.server_port}/v1", api_key=KEY, model="m1", **overrides)
    return LLMClient(settings)


def _run(coro):
    return asyncio.run(coro)


def test_chat_with_n_logprobs_usage_and_timing(server):
    async def go():
        client = _client(server)
        try:
            return await client.chat([{"role": "user", "content": "hi"}], n=3, seed=7, logprobs=True,
                                     top_logprobs=2, stop=["\n\n"], max_tokens=5)
        finally:
            await client.close()

    result = _run(go())
    assert result.texts == ["answer 0", "answer 1", "answer 2"]
    assert (result.usage.calls, result.usage.prompt_tokens, result.usage.completion_tokens) == (1, 12, 6)
    assert result.latency_s > 0
    assert result.logprobs[0][0].token == "96" and result.logprobs[0][0].top_logprobs["69"] == -2.5
    _, path, headers, body = server.seen[-1]
    assert path == "/v1/chat/completions"
    assert body["n"] == 3 and body["seed"] == 7 and body["stop"] == ["\n\n"] and body["top_logprobs"] == 2
    assert headers["authorization"] == f"Bearer {KEY}"


def test_streaming_passes_text_pieces_and_collects_usage(server):
    pieces = []

    async def go():
        client = _client(server)
        try:
            return await client.chat([{"role": "user", "content": "hi"}], on_text=pieces.append)
        finally:
            await client.close()

    result = _run(go())
    assert pieces == ["The answer", " is", " 96."] and result.text == "The answer is 96."
    assert result.usage.completion_tokens == 3
    assert server.seen[-1][3]["stream"] is True


def test_a_caller_may_end_a_stream_at_any_chunk(server):
    chunks = []

    def on_chunk(chunk):
        chunks.append(chunk)
        if len(chunks) == 2:
            raise StopStream

    async def go():
        client = _client(server)
        try:
            return await client.chat([{"role": "user", "content": "hi"}], on_chunk=on_chunk)
        finally:
            await client.close()

    result = _run(go())
    assert [c.text for c in chunks] == ["The answer", " is"] and all(c.index == 0 for c in chunks)
    assert result.text == "The answer is" and result.finish_reasons == ["stopped"]
    assert result.usage.completion_tokens == 2  # a stopped stream gets no usage from the server: what arrived


def test_completion_echo_scores_the_prompt(server):
    async def go():
        client = _client(server)
        try:
            return await client.complete("a b c", logprobs=1)
        finally:
            await client.close()

    result = _run(go())
    assert [t.token for t in result.logprobs[0]] == ["a", "b", "c"]
    assert result.logprobs[0][0].logprob is None and result.logprobs[0][2].logprob == -1.0
    body = server.seen[-1][3]
    assert body["echo"] is True and body["max_tokens"] == 0


def test_mimo_extension_goes_only_where_it_is_understood(server):
    async def go(**overrides):
        client = _client(server, **overrides)
        try:
            return await client.chat([{"role": "user", "content": "x"}],
                                     mimo=MimoRequest(precision=PrecisionRequest("p")))
        finally:
            await client.close()

    remote = _run(go())
    assert "mimo" not in server.seen[-1][3] and remote.engine == {"echo": None}
    opted_in = _run(go(engine_extensions=True))
    assert server.seen[-1][3]["mimo"] == {"precision": {"policy": "p"}}
    assert opted_in.engine == {"echo": {"precision": {"policy": "p"}}}


def test_server_errors_are_retried_by_the_openai_client(server):
    server.failures_left = 2

    async def go():
        client = _client(server, max_retries=2)
        try:
            return await client.chat([{"role": "user", "content": "x"}])
        finally:
            await client.close()

    assert _run(go()).text == "answer 0"
    assert len(server.seen) == 3


def test_timeout_raises_after_retries(server):
    server.delay_s = 1.0

    async def go():
        client = _client(server, timeout_s=0.2, max_retries=0)
        try:
            await client.chat([{"role": "user", "content": "x"}])
        finally:
            await client.close()

    with pytest.raises(openai.APITimeoutError):
        _run(go())


def test_concurrency_is_bounded(server):
    server.delay_s = 0.1
    active, peak = [0], [0]
    original = OpenAIHandler.do_POST

    def counting(self):
        active[0] += 1
        peak[0] = max(peak[0], active[0])
        try:
            original(self)
        finally:
            active[0] -= 1

    OpenAIHandler.do_POST = counting
    try:
        async def go():
            client = _client(server, concurrency=2)
            try:
                await asyncio.gather(*(client.chat([{"role": "user", "content": str(i)}]) for i in range(6)))
            finally:
                await client.close()

        _run(go())
    finally:
        OpenAIHandler.do_POST = original
    assert peak[0] == 2


def test_list_models(server):
    async def go():
        client = _client(server)
        try:
            return await client.list_models()
        finally:
            await client.close()

    assert _run(go()) == ["m1"]
