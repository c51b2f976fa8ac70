"""The output processor alone: logits in, tokens, events and the `mimo` report out. No model runs: the logits are
made by hand."""

import numpy as np
from precision_router.policy import static_policy

from mimo_core.extensions import MimoRequest, SpeculationRequest
from mimo_engine.metrics import WorkerMetrics
from mimo_engine.output import Delta, Done, Failed, OutputProcessor
from mimo_engine.runtime import PrecisionPlan
from mimo_engine.sampling import SamplingParams
from mimo_engine.scheduler import EngineRequest, Sequence
from mimo_engine.speculation import Draft, SequenceSpeculation

EOS = 256


class Tokenizer:
    eos_ids = {EOS}

    def token_bytes(self, token: int) -> bytes:
        return bytes([token]) if token < 256 else b""

    def token_text(self, token: int) -> str:
        return self.token_bytes(token).decode("latin-1")


def logits_for(*tokens: int) -> np.ndarray:
    """One row of logits [V] per token, each all but certain of it."""
    rows = np.zeros((len(tokens), EOS + 1), dtype=np.float32)
    rows[np.arange(len(tokens)), tokens] = 30.0
    return rows


def started(params: SamplingParams, speculation: SpeculationRequest | None = None, **kw):
    """A processor with one accepted request whose prompt is in, its events, and its one sequence."""
    events: list = []
    request = EngineRequest([1, 2, 3], params, events.append, mimo=MimoRequest(speculation=speculation), **kw)
    request.precision = PrecisionPlan(static_policy("native"), None, lambda entropy: None)
    processor = OutputProcessor("plain", Tokenizer(), WorkerMetrics())
    processor.accepted(request, speculation or SpeculationRequest("none"))
    spec = SequenceSpeculation(speculation.method, speculation.block, False) if speculation else None
    sequence = Sequence(0, 0, request, np.random.default_rng(0), params.max_tokens or 10, speculation=spec)
    processor.prompt_done(request, [sequence])
    return processor, request, sequence, events


def test_tokens_become_deltas_until_a_stop_string_then_done_with_the_report():
    processor, request, sequence, events = started(SamplingParams(temperature=0, stop=("lo",)))
    for token in b"hello":
        outcome = processor.process(sequence, logits_for(token))
        if outcome.next_token is None:
            break
    processor.finished(sequence)
    *deltas, done = events
    assert "".join(d.text for d in deltas) == "hel" and deltas[-1].finish_reason == "stop"
    assert isinstance(done, Done) and done.choices[0].text == "hel"
    report = done.report
    assert (report.model, report.prompt_tokens, report.completion_tokens) == ("plain", 3, 5)
    assert report.precision.policy == "native" and report.speculation.method == "none"
    assert processor.metrics.requests == 1 and not processor.metrics.live  # ended: folded into the totals


def test_max_tokens_ends_a_choice_with_length():
    processor, _, sequence, events = started(SamplingParams(temperature=0, max_tokens=2))
    assert processor.process(sequence, logits_for(ord("a"))).next_token == ord("a")
    assert processor.process(sequence, logits_for(ord("b"))).next_token is None
    assert events[-1] == Delta(0, "b", None, "length")


def test_a_drafted_block_is_verified_and_counted_in_the_report():
    processor, request, sequence, events = started(SamplingParams(temperature=0),
                                                   SpeculationRequest("ngram", 4, adaptive=False))
    sequence.draft = Draft((ord("a"), ord("b"), ord("x")))
    outcome = processor.process(sequence, logits_for(ord("a"), ord("b"), ord("c"), ord("d")))
    assert outcome.accepted == 2 and outcome.next_token == ord("c")  # the target's own token after the rejection
    assert "".join(e.text for e in events) == "abc"
    report = processor.report(request).speculation
    assert (report.method, report.drafted_tokens, report.accepted_tokens, report.verification_passes) == \
        ("ngram", 3, 2, 1)


def test_a_failed_request_hears_why_and_stays_counted():
    processor, request, sequence, events = started(SamplingParams(temperature=0))
    processor.process(sequence, logits_for(ord("a")))
    processor.failed(request, "the KV cache is full")
    assert events[-1] == Failed("the KV cache is full")
    assert processor.metrics.counter("completion_tokens") == 1 and not processor.metrics.live
