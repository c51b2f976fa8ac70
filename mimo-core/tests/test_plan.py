"""The record's inference plan, applied to every call a stage makes, and the `served` evidence of what came back."""

import asyncio

from mimo_core.client import Completion, Usage
from mimo_core.extensions import CacheRequest, MimoRequest, PrecisionRequest, SpeculationRequest
from mimo_core.plan import InferencePlan
from mimo_core.record import TaskRecord
from mimo_core.served import FIGURES, Served
from mimo_core.settings import load_settings
from mimo_core.stage import StageContext

BASE = {"id": 1, "domain": "math", "task": "3 + 4?"}


def _record(**sections) -> TaskRecord:
    return TaskRecord.from_dict({**BASE, **sections})


def test_an_undecided_plan_sends_nothing():
    assert InferencePlan.of(_record()).request() is None


def test_the_baseline_parts_are_sent_explicitly():
    record = _record(precision={"policy": "native"}, kv={"enabled": False},
                     reasoning={"speculation": {"method": "none", "block": None, "reason": "spec-reasoner is disabled"}})
    assert InferencePlan.of(record).request() == MimoRequest(
        precision=PrecisionRequest("native"), cache=CacheRequest(False), speculation=SpeculationRequest("none"))


def test_an_override_replaces_only_its_own_parts():
    record = _record(precision={"policy": "entropy@7"}, kv={"enabled": True},
                     reasoning={"speculation": {"method": "ngram", "block": 4, "acceptance": 0.5}})
    sent = InferencePlan.of(record).request(MimoRequest(precision=PrecisionRequest("native")))
    assert sent == MimoRequest(precision=PrecisionRequest("native"), cache=CacheRequest(True),
                               speculation=SpeculationRequest("ngram", block=4))


class FakeClient:
    """Records what each call was given (a unit test of control flow: no backend)."""

    def __init__(self):
        self.calls = []

    async def chat(self, messages, **kwargs):
        self.calls.append(kwargs)
        return Completion(["7"], ["stop"], kwargs["model"], Usage(1, 12, 1), 0.0)

    async def complete(self, prompt, **kwargs):
        self.calls.append(kwargs)
        return Completion(["7"], ["stop"], kwargs["model"], Usage(1, 12, 0, cached_tokens=8), 0.0)


def test_the_context_applies_the_plan_as_it_is_when_each_call_is_made():
    client = FakeClient()
    settings = load_settings(overrides={"model": "big", "draft_model": "small"}, env={}, dotenv_path=None)
    record = _record()
    ctx = StageContext(settings, lambda: client, record)

    async def go():
        await ctx.chat([{"role": "user", "content": "x"}])
        record.kv = {"enabled": False}  # a stage writes its part: every later call follows it
        await ctx.complete("x", model="small")
        await ctx.chat([{"role": "user", "content": "x"}], override=MimoRequest(cache=CacheRequest(True)))

    asyncio.run(go())
    assert [c["mimo"] for c in client.calls] == [None, MimoRequest(cache=CacheRequest(False)),
                                                 MimoRequest(cache=CacheRequest(True))]
    assert [c["model"] for c in client.calls] == ["big", "small", "big"]


def test_a_remote_deployment_replaces_the_oracle_model_only():
    client = FakeClient()
    settings = load_settings(overrides={"base_url": "http://127.0.0.1:9/v1", "model": "mimo", "draft_model": "small"},
                             env={}, dotenv_path=None)
    record = _record(precision={"policy": "fp8", "deployment": "mimo-fp8", "backend": "model-tier"})
    ctx = StageContext(settings, lambda: client, record)

    async def go():
        await ctx.chat([{"role": "user", "content": "x"}])
        await ctx.chat([{"role": "user", "content": "x"}], model="small")

    asyncio.run(go())
    assert [c["model"] for c in client.calls] == ["mimo-fp8", "small"]


def test_served_sums_what_was_reported_and_says_what_was_not():
    served = Served()
    served.add(1, 100, 5, None, None)  # a server that reports nothing beyond usage
    assert served.cached_tokens is None and served.reported == dict.fromkeys(FIGURES, False)
    engine = {"cache": {"cached_tokens": 64},
              "precision": {"policy": "native", "weight_bytes": 850, "weights_read": 800},
              "speculation": {"method": "ngram", "drafted_tokens": 8, "accepted_tokens": 6, "verification_passes": 2}}
    served.add(1, 80, 10, None, engine)
    served.add(1, 80, 10, 70, {**engine, "precision": {"policy": "mxfp4", "weight_bytes": 425, "weights_read": 800}})
    assert (served.calls, served.prompt_tokens, served.cached_tokens) == (3, 260, 134)
    assert served.policies == {"native": 1, "mxfp4": 1} and served.bits_per_weight == round(8 * 1275 / 1600, 4)
    assert (served.drafted_tokens, served.accepted_tokens, served.accepted_per_pass) == (16, 12, 4.0)
    assert served.drafters == {"ngram": 2}
    assert all(served.reported.values())
    total = Served()
    total.merge(served)
    total.merge(Served(calls=2, prompt_tokens=40))
    assert total.calls == 5 and total.cached_tokens == 134 and total.cached_share == round(134 / 300, 4)


def test_a_cancelled_call_counts_but_reports_nothing():
    ctx = StageContext(load_settings(env={}, dotenv_path=None), lambda: None)
    ctx.count_cancelled(7)
    assert (ctx.served.calls, ctx.served.completion_tokens, ctx.served.cached_tokens) == (1, 7, None)
