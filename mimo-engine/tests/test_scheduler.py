"""The scheduler's control flow, on a tiny fake model (the end-to-end tests in test_server.py use the real one)."""

import asyncio
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import pytest
from precision_router.policy import Policy, static_policy
from tiered_kv_cache import KVPool

from mimo_core.extensions import MimoRequest
from mimo_engine.config import EngineConfig, PrefillStall
from mimo_engine.engine import Engine, UnknownModel
from mimo_engine.output import Done, Failed
from mimo_engine.runtime import BLOCK_SIZE
from mimo_engine.sampling import SamplingParams
from mimo_engine.scheduler import MIN_CHUNK, QueueFull, Unservable
from mimo_engine.stream import Request
from mimo_engine.worker import ModelWorker, Unavailable
from mimo_engine.step import StepBatch

EOS = 256


class FakeTokenizer:
    eos_ids = {EOS}

    def token_bytes(self, token: int) -> bytes:
        return bytes([token]) if token < 256 else b""

    def token_text(self, token: int) -> str:
        return self.token_bytes(token).decode("latin-1")


@dataclass
class FakeConfig:
    context_length: int = 64
    n_layer: int = 1
    n_kv_head: int = 1
    head_dim: int = 1


@dataclass
class FakeModel:
    """Byte-level 'model' that continues any prompt with `script`, then EOS. It keeps each token's id in the KV pool
    and reads a sequence's history back through its block table, so shared and forked blocks must hold the right
    tokens; prompt tokens are below 32, generated ones (the script's bytes) 32 or more."""

    script: bytes = b"hello world"
    step_s: float = 0.0
    token_s: float = 0.0  # and this much more per token of the step
    fail: bool = False
    name: str = "fake"
    fingerprint: str = "fake"
    config: FakeConfig = field(default_factory=FakeConfig)
    tokenizer: FakeTokenizer = field(default_factory=FakeTokenizer)
    steps: list[StepBatch] = field(default_factory=list)
    threads_set_in: list[str] = field(default_factory=list)

    def new_pool(self, num_blocks: int) -> KVPool:
        return KVPool(1, 1, 1, num_blocks, BLOCK_SIZE)

    def use_threads(self) -> None:  # LoadedModel's per-thread kernel setup: here, who called it
        self.threads_set_in.append(threading.current_thread().name)

    def policy(self, name: str | None) -> Policy:  # LoadedModel's precision side: every policy reads one form
        return static_policy(name or "native")

    def plan(self, policy: Policy, entropy: float | None = None) -> None:
        return None

    def plan_reads(self, plan: None) -> tuple[dict, int, int]:
        return {}, 0, 0

    def forward(self, batch: StepBatch, pool: KVPool, read: dict | None = None) -> np.ndarray:
        if self.fail:
            raise RuntimeError("boom")
        time.sleep(self.step_s + self.token_s * batch.num_tokens)
        self.steps.append(batch)
        rows = []
        for s in batch.sequences:
            ids = np.asarray(s.token_ids, dtype=np.float32).reshape(-1, 1, 1)
            pool.write(0, pool.slots(s.block_table, s.start_position, s.end_position), ids, ids)
            history = pool.read(0, s.block_table, s.end_position)[0].ravel()  # [end]
            for i in s.logit_indices:
                written = int((history[: s.start_position + i + 1] >= 32).sum())
                logits = np.zeros(EOS + 1, dtype=np.float32)  # [V]
                logits[self.script[written] if written < len(self.script) else EOS] = 20.0
                rows.append(logits)
        return np.stack(rows) if rows else np.zeros((0, EOS + 1), dtype=np.float32)  # [num_logits, V]

    @property
    def batch_sizes(self) -> list[int]:
        return [len(b.sequences) for b in self.steps]

    @property
    def prefills(self) -> int:
        return sum(s.start_position == 0 for b in self.steps for s in b.sequences)


def run(worker: ModelWorker, *requests: tuple[list[int], SamplingParams]) -> list:
    """Submit requests together and wait for all of their final events."""

    async def main() -> list:
        submitted = [Request(prompt, params) for prompt, params in requests]
        for request in submitted:
            worker.submit(request.engine)
        return await asyncio.gather(*(r.result() for r in submitted))

    return asyncio.run(main())


@pytest.fixture
def model():
    return FakeModel()


@pytest.fixture
def worker(model):
    worker = ModelWorker(model, EngineConfig(max_batch_size=4, max_queue=2))
    yield worker
    worker.close()


def test_generates_until_eos(worker):
    (done,) = run(worker, ([1, 2, 3], SamplingParams(temperature=0)))
    assert isinstance(done, Done)
    assert done.choices[0].text == "hello world" and done.choices[0].finish_reason == "stop"
    assert done.report.prompt_tokens == 3 and done.report.completion_tokens == len("hello world") + 1  # and EOS
    assert worker.core.blocks.num_used_blocks == 0  # the finished sequence gave its blocks back


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
    assert model.prefills == 1 and done.report.cache.prefilled_tokens == 2
    assert [c.text for c in done.choices] == ["hello"] * 3
    assert max(model.batch_sizes) == 3 and 3 in done.report.batch_sizes


def test_concurrent_requests_decode_in_one_batch(worker, model):
    results = run(worker, *[([i + 1], SamplingParams(temperature=0, max_tokens=6)) for i in range(4)])
    assert all(r.choices[0].text == "hello " for r in results)
    assert max(model.batch_sizes) == 4 and worker.metrics.requests == 4


def test_prompt_logprobs_for_echo(worker):
    async def main():
        request = Request([4, 5, 6], SamplingParams(max_tokens=0), prompt_logprobs=1)
        worker.submit(request.engine)
        return await request.result()

    done = asyncio.run(main())
    assert done.prompt_scores[0] is None and len(done.prompt_scores) == 3
    assert done.prompt_scores[1].token == 5 and done.prompt_scores[1].top[0][0] == ord("h")
    assert done.choices[0].finish_reason == "length" and done.choices[0].tokens == []


def test_queue_full_raises_instead_of_waiting():
    worker = ModelWorker(FakeModel(step_s=0.01), EngineConfig(max_batch_size=1, max_queue=1))

    async def main():
        first, second = Request([1], SamplingParams()), Request([1], SamplingParams())
        worker.submit(first.engine)
        worker.submit(second.engine)
        with pytest.raises(QueueFull):
            worker.submit(Request([1], SamplingParams()).engine)
        return await asyncio.gather(first.result(), second.result())

    try:
        assert all(isinstance(r, Done) for r in asyncio.run(main()))
        assert worker.metrics.rejected == 1
    finally:
        worker.close()


def test_requests_that_can_never_run_are_invalid(worker):
    async def submit(prompt, params):
        worker.submit(Request(prompt, params).engine)

    with pytest.raises(Unservable, match="context"):
        asyncio.run(submit(list(range(64)), SamplingParams()))
    with pytest.raises(Unservable, match="max batch size"):
        asyncio.run(submit([1], SamplingParams(n=5)))


def test_cancelled_request_is_retired(model):
    model.script = b"x" * 60
    model.step_s = 0.005
    worker = ModelWorker(model, EngineConfig(max_batch_size=4, max_queue=0))

    async def main():
        gone, kept = Request([1], SamplingParams()), Request([2], SamplingParams(max_tokens=20))
        worker.submit(gone.engine)
        worker.submit(kept.engine)
        await asyncio.sleep(0.05)
        gone.cancel()
        return await kept.result()

    try:
        assert asyncio.run(main()).choices[0].finish_reason == "length"
        time.sleep(0.05)
        assert worker.gauges().running == 0 and worker.core.blocks.num_used_blocks == 0
    finally:
        worker.close()


def test_a_request_whose_event_loop_closed_is_retired_not_a_crash(model):
    # a caller that returns without cancelling (a script's asyncio.run ending) leaves its requests running
    model.script = b"x" * 200
    model.step_s = 0.005
    worker = ModelWorker(model, EngineConfig(max_batch_size=4, max_queue=0))

    async def leave():
        worker.submit(Request([1], SamplingParams(max_tokens=150)).engine)
        await asyncio.sleep(0.05)

    try:
        asyncio.run(leave())
        deadline = time.monotonic() + 10
        while worker.gauges().running and time.monotonic() < deadline:
            time.sleep(0.02)
        assert worker.gauges().running == 0 and worker.core.blocks.num_used_blocks == 0

        async def again():  # the worker is alive and serves the next caller
            request = Request([2], SamplingParams(max_tokens=3))
            worker.submit(request.engine)
            return await request.result()

        assert isinstance(asyncio.run(again()), Done)
    finally:
        worker.close()


def test_model_error_fails_the_request(model):
    model.fail = True
    worker = ModelWorker(model)
    try:
        (result,) = run(worker, ([1], SamplingParams()))
        assert isinstance(result, Failed) and "boom" in result.message
        assert worker.core.blocks.num_used_blocks == 0  # a failed request frees its blocks too
    finally:
        worker.close()


def test_engine_loads_each_model_once_and_knows_unknown_names():
    loads = []

    def load(name, report):
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


def test_a_long_prompt_is_prefilled_in_chunks_that_share_steps_with_running_decodes():
    model = FakeModel(script=b"abcdefghijklmnopqrstuvwxyz" * 4, step_s=0.003, config=FakeConfig(context_length=256))
    worker = ModelWorker(model, EngineConfig(max_batch_size=4, max_queue=2, step_tokens=8))

    async def main():
        running = [Request([1], SamplingParams(temperature=0, max_tokens=100)) for _ in range(2)]
        for request in running:
            worker.submit(request.engine)
        await asyncio.sleep(0.02)  # both streams are decoding when the long prompt arrives
        long = Request(list(range(1, 31)) * 3, SamplingParams(temperature=0, max_tokens=2))
        worker.submit(long.engine)
        return await asyncio.gather(*(r.result() for r in [*running, long]))

    try:
        results = asyncio.run(main())
    finally:
        worker.close()
    assert all(isinstance(r, Done) for r in results)
    chunks = [(b, s) for b in model.steps for s in b.sequences if len(s.token_ids) > 1]
    # 90 prompt tokens in chunks of 6: every step that carried a piece of the long prompt also advanced both running
    # streams by a token, within the budget of 8 tokens a step
    assert len(chunks) == 90 // 6 and all(b.num_tokens == 8 for b, _ in chunks)
    assert all(sum(len(s.token_ids) == 1 for s in b.sequences) == 2 for b, _ in chunks)


def test_a_step_that_decodes_carries_the_prompt_chunk_its_measured_cost_fits_in_its_time_bound():
    # 0.5 ms a token: a step with a decode row may take 0.04 s, so its chunk has some 70 tokens, not the 127 the token
    # budget leaves; a slower machine only makes them smaller, never below MIN_CHUNK
    model = FakeModel(script=b"x" * 200, step_s=0.001, token_s=0.0005, config=FakeConfig(context_length=512))
    timings = []
    worker = ModelWorker(model, EngineConfig(max_batch_size=4, max_queue=2, step_tokens=128,
                                             prefill_stall=PrefillStall(seconds=0.04, decode_steps=2)),
                         on_step=timings.append)

    async def main():
        stream = Request([1], SamplingParams(temperature=0, max_tokens=150))
        worker.submit(stream.engine)
        await asyncio.sleep(0.05)  # decoding when the long prompt arrives
        long = Request(list(range(1, 31)) * 12, SamplingParams(temperature=0, max_tokens=1))
        worker.submit(long.engine)
        return await long.result(), stream

    try:
        done, stream = asyncio.run(main())
        stream.cancel()
    finally:
        worker.close()
    assert isinstance(done, Done) and done.report.cache.prefilled_tokens == 360
    beside = [t.prompt_tokens for t in timings if t.chunks and t.decode_tokens]
    assert len(beside) >= 360 // 90 and all(MIN_CHUNK <= n <= 90 for n in beside[:-1]), beside


def test_a_prompt_that_starts_like_an_earlier_one_reuses_its_blocks(worker, model):
    prompt = list(range(1, 21))
    (first,) = run(worker, (prompt, SamplingParams(temperature=0, max_tokens=3)))
    (second,) = run(worker, (prompt + [7], SamplingParams(temperature=0, max_tokens=3)))
    assert first.report.cache.cached_tokens == 0 and second.report.cache.cached_tokens == BLOCK_SIZE
    assert second.report.cache.prefilled_tokens == 21 - BLOCK_SIZE
    assert second.choices[0].text == first.choices[0].text == "hel"

    async def without_cache():
        request = Request(prompt + [7], SamplingParams(temperature=0, max_tokens=3),
                          mimo=MimoRequest.from_dict({"cache": {"enabled": False}}))
        worker.submit(request.engine)
        return await request.result()

    assert asyncio.run(without_cache()).report.cache.cached_tokens == 0


def test_a_cancelled_request_s_tokens_are_counted_as_they_were_computed(model):
    model.script = b"x" * 60
    model.step_s = 0.002
    worker = ModelWorker(model, EngineConfig(max_batch_size=4, max_queue=0))
    prompt = [1, 2, 3, 4, 5]

    async def main():
        request = Request(prompt, SamplingParams(max_tokens=50))
        worker.submit(request.engine)
        received = 0
        async for _ in request.events():  # the client reads a few tokens, then hangs up
            received += 1
            if received == 3:
                break
        request.cancel()
        deadline = time.monotonic() + 10
        while worker.metrics.live:  # the worker retires it at its next step (the loop stays up meanwhile)
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        return received

    try:
        received = asyncio.run(main())
        assert worker.metrics.counter("completion_tokens") >= received
        assert worker.metrics.counter("prompt_tokens") == len(prompt)
        assert worker.metrics.counter("cache_prefilled_tokens") == len(prompt)
        assert worker.metrics.histograms["duration_s"].n == 0  # it never finished: no duration observed
    finally:
        worker.close()


def test_metrics_count_a_running_request_before_it_ends(model):
    model.script = b"x" * 60
    model.step_s = 0.002
    worker = ModelWorker(model, EngineConfig(max_batch_size=4, max_queue=0))

    async def main():
        request = Request([1, 2], SamplingParams(max_tokens=40))
        worker.submit(request.engine)
        seen = 0
        async for event in request.events():
            seen += 1
            if seen == 5:  # mid-stream: what it has computed is already counted
                assert worker.metrics.counter("completion_tokens") >= 5
                assert worker.metrics.counter("prompt_tokens") == 2
        return event

    try:
        done = asyncio.run(main())
        assert isinstance(done, Done)
        assert worker.metrics.counter("completion_tokens") == done.report.completion_tokens == 40
        assert worker.metrics.histograms["duration_s"].n == 1 and not worker.metrics.live
    finally:
        worker.close()


def test_a_loading_model_keeps_the_engine_busy_and_says_how_far_it_is():
    pulled, release = threading.Event(), threading.Event()

    def load(name, report):
        report("pulling", 40, 100)
        pulled.set()
        release.wait(10)
        report("loading", 0, 0)
        return FakeModel(name=name)

    engine = Engine(["a", "b"], load)
    try:
        assert not engine.busy() and engine.model_health()["a"].state == "not_loaded"
        engine.request_load(["a"])
        assert pulled.wait(10)
        far_later = engine.last_active() + 3600
        assert engine.busy() and engine.idle_s(now=far_later) == 0  # an hour into a load is not idle
        a = engine.model_health()["a"]
        assert (a.state, a.bytes_done, a.bytes_total) == ("pulling", 40, 100)
        release.set()
        deadline = time.monotonic() + 10
        while engine.model_health()["a"].state != "ready":
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert engine.loaded() == ["a"] and engine.model_health()["b"].state == "not_loaded"
        assert not engine.busy() and engine.idle_s(now=engine.last_active() + 5) == 5  # the clock starts at its end
        with pytest.raises(UnknownModel):
            engine.request_load(["nope"])
    finally:
        engine.close()


def test_a_request_in_flight_keeps_the_engine_busy_and_a_failed_load_says_so():
    def load(name, report):
        raise OSError("disk on fire")

    engine = Engine(["a"], load)
    try:
        engine.begin_request()
        assert engine.busy() and engine.idle_s(now=engine.last_active() + 3600) == 0
        engine.end_request()
        assert not engine.busy()
        with pytest.raises(Unavailable):
            engine.worker("a")
        failed = engine.model_health()["a"]
        assert failed.state == "failed" and "could not be loaded" in failed.error and "disk" not in failed.error
        assert not engine.busy()
    finally:
        engine.close()


def test_the_worker_sets_its_own_thread_up_to_run_the_model(worker, model):
    run(worker, ([1], SamplingParams(temperature=0, max_tokens=2)))
    assert model.threads_set_in == ["mimo-engine:fake"]  # numba's thread count is per thread: the worker's own
