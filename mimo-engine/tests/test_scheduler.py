"""The scheduler's control flow, on a tiny fake model (the end-to-end tests in test_server.py use the real one)."""

import asyncio
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import pytest

from mimo_engine.sampling import InvalidRequest, SamplingParams
from mimo_engine.scheduler import Done, Engine, Failed, ModelWorker, QueueFull, Request, UnknownModel

EOS = 256


@dataclass
class FakeCache:
    num_tokens: int = 0

    def fork(self) -> "FakeCache":
        return FakeCache(self.num_tokens)


class FakeTokenizer:
    eos_ids = {EOS}

    def token_bytes(self, token: int) -> bytes:
        return bytes([token]) if token < 256 else b""

    def token_text(self, token: int) -> str:
        return self.token_bytes(token).decode("latin-1")


@dataclass
class FakeConfig:
    context_length: int = 64


@dataclass
class FakeModel:
    """Byte-level 'model' that always continues with `script` then EOS; records what it was asked to do."""

    script: bytes = b"hello world"
    step_s: float = 0.0
    fail_decode: bool = False
    name: str = "fake"
    config: FakeConfig = field(default_factory=FakeConfig)
    tokenizer: FakeTokenizer = field(default_factory=FakeTokenizer)
    prefills: int = 0
    batch_sizes: list[int] = field(default_factory=list)

    def new_cache(self) -> FakeCache:
        return FakeCache()

    def _logits(self, written: int) -> np.ndarray:
        logits = np.zeros(EOS + 1, dtype=np.float32)  # [V]
        logits[self.script[written] if written < len(self.script) else EOS] = 20.0
        return logits

    def prefill(self, tokens: list[int], cache: FakeCache, last_only: bool = False) -> np.ndarray:
        self.prefills += 1
        cache.num_tokens += len(tokens)
        self.prompt_length = len(tokens)
        return np.stack([self._logits(0)] * (1 if last_only else len(tokens)))  # [P or 1, V]

    def decode(self, tokens: list[int], caches: list[FakeCache]) -> np.ndarray:
        if self.fail_decode:
            raise RuntimeError("boom")
        time.sleep(self.step_s)
        self.batch_sizes.append(len(tokens))
        for cache in caches:
            cache.num_tokens += 1
        return np.stack([self._logits(c.num_tokens - self.prompt_length) for c in caches])  # [B, V]


def run(worker: ModelWorker, *requests: tuple[list[int], SamplingParams]) -> list:
    """Submit requests together and wait for all of their final events."""

    async def main() -> list:
        submitted = [Request(prompt, params) for prompt, params in requests]
        for request in submitted:
            worker.submit(request)
        return await asyncio.gather(*(r.result() for r in submitted))

    return asyncio.run(main())


@pytest.fixture
def model():
    return FakeModel()


@pytest.fixture
def worker(model):
    worker = ModelWorker(model, max_batch_size=4, max_queue=2)
    yield worker
    worker.close()


def test_generates_until_eos(worker):
    (done,) = run(worker, ([1, 2, 3], SamplingParams(temperature=0)))
    assert isinstance(done, Done)
    assert done.choices[0].text == "hello world" and done.choices[0].finish_reason == "stop"
    assert done.stats.prompt_tokens == 3 and done.stats.completion_tokens == len("hello world") + 1  # and EOS


def test_max_tokens_and_stop_strings(worker):
    short, stopped = run(
        worker,
        ([1], SamplingParams(temperature=0, max_tokens=4)),
        ([1], SamplingParams(temperature=0, stop=("o w",))),  # spans three tokens
    )
    assert (short.choices[0].text, short.choices[0].finish_reason) == ("hell", "length")
    assert (stopped.choices[0].text, stopped.choices[0].finish_reason) == ("hell", "stop")


def test_n_choices_share_one_prefill(worker, model):
    (done,) = run(worker, ([1, 2], SamplingParams(temperature=0, n=3, max_tokens=5)))
    assert model.prefills == 1
    assert [c.text for c in done.choices] == ["hello"] * 3
    assert max(model.batch_sizes) == 3 and done.stats.batch_sizes == {3}


def test_concurrent_requests_decode_in_one_batch(worker, model):
    results = run(worker, *[([i + 1], SamplingParams(temperature=0, max_tokens=6)) for i in range(4)])
    assert all(r.choices[0].text == "hello " for r in results)
    assert max(model.batch_sizes) == 4
    assert worker.metrics.max_batch_size_seen == 4 and worker.metrics.requests == 4


def test_prompt_logprobs_for_echo(worker):
    async def main():
        request = Request([104, 101, 108], SamplingParams(max_tokens=0), prompt_logprobs=1)
        worker.submit(request)
        return await request.result()

    done = asyncio.run(main())
    assert done.prompt_scores[0] is None and len(done.prompt_scores) == 3
    assert done.prompt_scores[1].token == 101 and done.prompt_scores[1].top[0][0] == ord("h")
    assert done.choices[0].finish_reason == "length" and done.choices[0].tokens == []


def test_queue_full_raises_instead_of_waiting():
    worker = ModelWorker(FakeModel(step_s=0.01), max_batch_size=1, max_queue=1)

    async def main():
        first, second = Request([1], SamplingParams()), Request([1], SamplingParams())
        worker.submit(first)
        worker.submit(second)
        with pytest.raises(QueueFull) as info:
            worker.submit(Request([1], SamplingParams()))
        assert info.value.retry_after_s >= 1
        return await asyncio.gather(first.result(), second.result())

    try:
        assert all(isinstance(r, Done) for r in asyncio.run(main()))
        assert worker.metrics.rejected == 1
    finally:
        worker.close()


def test_requests_that_can_never_run_are_invalid(worker):
    async def submit(prompt, params):
        worker.submit(Request(prompt, params))

    with pytest.raises(InvalidRequest, match="context"):
        asyncio.run(submit(list(range(64)), SamplingParams()))
    with pytest.raises(InvalidRequest, match="max batch size"):
        asyncio.run(submit([1], SamplingParams(n=5)))


def test_cancelled_request_is_retired(model):
    model.script = b"x" * 60
    model.step_s = 0.005
    worker = ModelWorker(model, max_batch_size=4, max_queue=0)

    async def main():
        gone, kept = Request([1], SamplingParams()), Request([2], SamplingParams(max_tokens=20))
        worker.submit(gone)
        worker.submit(kept)
        await asyncio.sleep(0.05)
        gone.cancel()
        return await kept.result()

    try:
        assert asyncio.run(main()).choices[0].finish_reason == "length"
        assert worker.metrics.running == 0
    finally:
        worker.close()


def test_model_error_fails_the_request(model):
    model.fail_decode = True
    worker = ModelWorker(model)
    try:
        (result,) = run(worker, ([1], SamplingParams()))
        assert isinstance(result, Failed) and "boom" in result.message
    finally:
        worker.close()


def test_engine_loads_each_model_once_and_knows_unknown_names():
    loads = []

    def load(name):
        loads.append(name)
        time.sleep(0.05)
        return FakeModel(name=name)

    engine = Engine(["a", "b"], load)
    threads = [threading.Thread(target=engine.worker, args=("a",)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert loads == ["a"] and engine.loaded() == ["a"]
        with pytest.raises(UnknownModel):
            engine.worker("nope")
    finally:
        engine.close()
