"""The scheduler alone, with plain objects: what each step computes, who is admitted, what is refused. No model
runs: the steps are decided, not executed."""

from dataclasses import dataclass

import pytest
from precision_router.policy import static_policy
from tiered_kv_cache import KVPool

from mimo_engine.runtime import BLOCK_SIZE, EngineCore, PrecisionPlan
from mimo_engine.sampling import SamplingParams
from mimo_engine.scheduler import EngineRequest, Prefill, Scheduler, Sequence, Unservable


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
