"""The scheduler alone, with plain objects: what each step computes, who is admitted, what is refused. No model
runs: the steps are decided, not executed."""

from dataclasses import dataclass

import pytest
from precision_router.policy import static_policy
from tiered_kv_cache import KVPool

from mimo_engine.config import PrefillStall
from mimo_engine.costs import ChunkCost
from mimo_engine.runtime import BLOCK_SIZE, EngineCore, PrecisionPlan
from mimo_engine.sampling import SamplingParams
from mimo_engine.scheduler import MIN_CHUNK, EngineRequest, Prefill, Scheduler, Sequence, Unservable


@dataclass
class Config:
    context_length: int = 64
    n_layer: int = 1
    n_kv_head: int = 1
    head_dim: int = 1


class Model:
    """What the engine core reads of a model before any step runs."""

    name = fingerprint = "plain"
    config = Config()

    def new_pool(self, num_blocks: int) -> KVPool:
        return KVPool(1, 1, 1, num_blocks, BLOCK_SIZE)

    def policy(self, name):
        return static_policy(name or "native")

    def plan(self, policy, entropy=None):
        return None


def request(prompt_tokens: int, n: int = 1) -> EngineRequest:
    r = EngineRequest(list(range(1, prompt_tokens + 1)), SamplingParams(n=n), sink=[].append)
    r.precision = PrecisionPlan.of(Model(), None)
    return r


def scheduler(max_batch_size: int = 4, capacity: int = 6, step_tokens: int = 8, blocks: int = 16) -> Scheduler:
    return Scheduler(EngineCore(Model(), blocks), max_batch_size, capacity, step_tokens)


def decoding(s: Scheduler) -> None:
    """Start a one-token request decoding (its prompt computed as if its step had run)."""
    s.add(request(1))
    out = s.schedule()
    s.core.sequences[out.work[-1].seq_id].num_computed = 1
    for sequence in s.prefilled(out.owners[-1]):
        s.core.append(sequence.seq_id, [40])
        s.start(sequence)


def test_a_prompt_is_admitted_and_chunked_within_the_token_budget():
    s = scheduler(step_tokens=8)
    s.add(request(20))
    first = s.schedule()
    assert [a.cached for a in first.admitted] == [{"hbm": 0, "dram": 0, "disk": 0}]
    assert [(w.num_tokens, w.logits) for w in first.work] == [(8, "none")]
    assert isinstance(first.owners[0], Prefill) and not first.decode_only
    s.core.sequences[first.work[0].seq_id].num_computed += 8  # as if the step had run
    assert [(w.num_tokens, w.logits) for w in s.schedule().work] == [(8, "none")]


def test_decoding_sequences_go_first_and_prompts_share_what_is_left():
    s = scheduler(step_tokens=8)
    s.add(request(3, n=2))
    out = s.schedule()
    s.core.sequences[out.work[0].seq_id].num_computed = 3
    for sequence in s.prefilled(out.owners[0]):
        s.core.append(sequence.seq_id, [40])
        s.start(sequence)
    s.add(request(30))
    step = s.schedule()
    assert [w.num_tokens for w in step.work] == [1, 1, 6]  # two decode tokens, then a chunk of the rest
    assert [type(o) for o in step.owners] == [Sequence, Sequence, Prefill]


def test_admission_respects_the_batch_and_the_queue_its_capacity():
    s = scheduler(max_batch_size=2, capacity=3)
    assert s.has_room(3) and not s.has_room(4)
    s.add(request(2, n=2))
    s.add(request(2))
    assert len(s.schedule().admitted) == 1  # the second waits: the batch has room for two sequences
    assert not s.has_room(1) and len(s.waiting) == 1


def test_requests_that_can_never_run_name_the_part_at_fault():
    s = scheduler(max_batch_size=2)
    with pytest.raises(Unservable) as empty:
        s.check(request(0))
    assert empty.value.field == "prompt"
    with pytest.raises(Unservable, match="context") as long:
        s.check(request(64))
    assert long.value.field is None
    with pytest.raises(Unservable) as wide:
        s.check(request(2, n=3))
    assert wide.value.field == "n"


def test_a_released_request_forgets_its_sequences_and_cancelled_waiting_ones_leave_the_queue():
    s = scheduler(max_batch_size=1)
    admitted, waiting = request(20), request(2)
    s.add(admitted)
    s.schedule()
    waiting.cancelled = True
    s.add(waiting)
    assert s.admitted() == [admitted] and len(s.core.sequences) == 1
    s.release(admitted)
    assert not s.admitted() and not s.core.sequences
    assert s.take_waiting(cancelled_only=True) == [waiting] and not s.busy


LONG = 240  # a long prompt's tokens
STALL = PrefillStall(seconds=0.1, decode_steps=4)


@dataclass
class LongConfig(Config):
    context_length: int = 1024  # room for long prompts


class LongModel(Model):
    config = LongConfig()


def long_scheduler(step_tokens: int = 128, stall: PrefillStall = STALL) -> Scheduler:
    return Scheduler(EngineCore(LongModel(), 80), max_batch_size=4, capacity=6, step_tokens=step_tokens, stall=stall)


def chunks(out) -> list[int]:
    return [w.num_tokens for w, o in zip(out.work, out.owners) if isinstance(o, Prefill)]


def test_a_step_that_decodes_cuts_its_prompt_chunk_to_what_its_time_bound_leaves():
    s = long_scheduler()
    decoding(s)
    s.add(request(LONG))
    # bound max(0.1 s, 4 x 0.02 s) less the decode row's 0.02 s: 0.08 s, at 2 ms a token
    assert chunks(s.schedule(ChunkCost(decode_s=0.02, token_s=0.002, position_s=0.0))) == [40]
    alone = long_scheduler()
    alone.add(request(LONG))
    assert chunks(alone.schedule(ChunkCost(0.02, 0.002, 0.0))) == [128]  # nothing decodes: the token budget alone


def test_the_bound_grows_with_the_decode_step_and_a_later_chunk_pays_for_its_position():
    s = long_scheduler(step_tokens=1000)
    decoding(s)
    s.add(request(LONG))
    # a slow decode step: bound 4 x 0.05 s, 0.15 s left, 75 tokens at 2 ms
    first = s.schedule(ChunkCost(decode_s=0.05, token_s=0.002, position_s=0.0))
    assert chunks(first) == [75]
    s.core.sequences[first.work[-1].seq_id].num_computed += 75
    cost = ChunkCost(decode_s=0.02, token_s=0.0005, position_s=0.00001)
    # from position 75 each token also pays for the positions it attends to: the most that fit in 0.08 s
    fits = max(n for n in range(1, 200) if 0.0005 * n + 0.00001 * sum(75 + i + 1 for i in range(n)) <= 0.08)
    assert chunks(s.schedule(cost)) == [fits] and MIN_CHUNK < fits < 80  # without the position term: 160


def test_the_oldest_prompt_always_advances_and_a_later_one_waits_for_time():
    s = long_scheduler()
    decoding(s)
    s.add(request(LONG))
    s.add(request(LONG))
    dear = ChunkCost(decode_s=0.02, token_s=1.0, position_s=0.0)  # not one token fits in the bound
    out = s.schedule(dear)
    assert chunks(out) == [MIN_CHUNK] and len(out.admitted) == 1 and len(s.waiting) == 1
    s.core.sequences[out.work[-1].seq_id].num_computed = LONG - 30  # as if steps had run: 30 tokens left
    out = s.schedule(ChunkCost(decode_s=0.02, token_s=0.001, position_s=0.0))
    assert chunks(out) == [30, 50] and len(out.admitted) == 1  # 0.08 s at 1 ms a token: the next gets what is left


def test_before_any_chunk_is_measured_a_step_that_decodes_carries_one_probe_chunk():
    s = long_scheduler()
    decoding(s)
    s.add(request(LONG))
    s.add(request(LONG))
    out = s.schedule(None)
    assert chunks(out) == [MIN_CHUNK] and len(s.waiting) == 1


def test_no_time_bound_leaves_the_token_budget_alone():
    s = long_scheduler(stall=PrefillStall(seconds=0.0))
    decoding(s)
    s.add(request(LONG))
    assert chunks(s.schedule(ChunkCost(decode_s=0.02, token_s=1.0, position_s=0.0))) == [127]


@pytest.mark.parametrize("cost", [ChunkCost(0.0, 0.002, 0.0), ChunkCost(0.0, 0.001, 0.00002),
                                  ChunkCost(0.0, 0.0, 0.00001), ChunkCost(0.0, 0.0031, 0.0000014)])
@pytest.mark.parametrize("position", [0, 100, 1400])
def test_tokens_within_is_the_most_tokens_whose_cost_fits(cost, position):
    for seconds in (0.0, 0.01, 0.08, 0.25):
        n = cost.tokens_within(seconds, position)
        assert cost.seconds(n, position) <= seconds + 1e-12
        assert cost.seconds(n + 1, position) > seconds
