"""Whether step drafting pays, decided from measured figures: the rules, the gate in the stage, and on the real engine
the stage stepping aside (smollm2 drafting for itself cannot pay) while it still sets the record's block drafter."""

import asyncio
import io
import json

import pytest

from mimo_core.client import TextTokenLogprob
from mimo_core.record import TaskRecord
from mimo_core.settings import Settings
from mimo_core.stage import StageContext
from mimo_core.testing import fresh_calibrations

from spec_reasoner.calibration import (Calibration, Calibrations, CriterionFigures, discrimination, drafting_pays,
                                       expected_accepted)
from spec_reasoner.reasoner import ReasoningOptions, Reasoner, reason_stream
from spec_reasoner.scoring import span_logprob


def test_discrimination_counts_pairs_ranked_right_above_wrong_ties_half():
    assert discrimination([7.0, 7.0, 9.0], [7.0, 2.0, 1.0]) == pytest.approx(round(2.5 / 3, 4))
    assert discrimination([None, 1.0], [3.0, 2.0]) == 0.25  # a missing value tells nothing: half
    assert discrimination([], []) == 0.5


def test_drafting_pays_only_when_k_drafted_steps_cost_less_than_the_accepted_ones_save():
    assert expected_accepted(3) == pytest.approx(0.5 + 0.25 + 0.125)
    assert not drafting_pays(3, draft_ms=12.0, oracle_ms=30.0)  # 2.5x faster: 36 ms against 26 ms saved
    assert drafting_pays(3, draft_ms=5.0, oracle_ms=30.0)  # 6x faster: 15 ms against 26 ms saved
    assert not drafting_pays(3, draft_ms=None, oracle_ms=30.0)  # unmeasured is not paying


def test_a_step_is_the_tokens_that_start_in_its_characters():
    prompt = "prefix 12*8=96"
    tokens = [TextTokenLogprob("prefix", -5.0, offset=0), TextTokenLogprob(" 12", -1.0, offset=6),
              TextTokenLogprob("*8", -2.0, offset=9), TextTokenLogprob("=96", -3.0, offset=11)]
    assert span_logprob(tokens, 6, len(prompt)) == pytest.approx(-2.0)
    no_offsets = [TextTokenLogprob(t.token, t.logprob) for t in tokens]  # counted from the token texts instead
    assert span_logprob(no_offsets, 6, len(prompt)) == pytest.approx(-2.0)
    assert span_logprob(tokens, 100, 200) is None


def _calibration(tells: bool, pays: bool) -> Calibration:
    figures = CriterionFigures([9.0], [2.0] if tells else [9.0], 1.0 if tells else 0.5, 5.5 if tells else None)
    return Calibration(1, "embedded", "draft", "oracle", {"rating": figures, "logprob": figures},
                       {"draft": 5.0 if pays else 30.0, "oracle": 30.0}, "rating" if tells else None,
                       tells and pays, "said")


class Pretend(Calibrations):
    """A calibration already measured (a unit test of the gate: no backend)."""

    def __init__(self, calibration):
        super().__init__(k=3)
        self.calibration = calibration

    async def pair(self, ctx, draft, oracle):
        return self.calibration

    async def drafter(self, ctx, oracle, domain):
        return "ngram", "ngram accepted 3.10 tokens a pass on math prompts (block 8)"


class Capable:
    async def scoring(self, ctx, model):
        return "completions"


@pytest.mark.parametrize("tells, pays", [(False, True), (True, False)])
def test_the_stage_steps_aside_where_the_calibration_says_drafting_cannot_pay(tells, pays):
    settings = Settings(base_url=None, model="oracle", draft_model="draft")
    record = TaskRecord(id=1, domain="math", task="What is 12 * 8?")
    reasoner = Reasoner(ReasoningOptions(), Capable(), Pretend(_calibration(tells, pays)))
    asyncio.run(reasoner.process(record, StageContext(settings, lambda: None, record)))
    assert record.reasoning["step_drafting"]["used"] is False and record.reasoning["step_drafting"]["reason"]
    assert "chain" not in record.reasoning and "answer" not in record.reasoning  # the agents reason alone
    # the block drafter was still chosen from its measured accepted length on math prompts
    assert record.reasoning["speculation"]["method"] == "ngram" and record.reasoning["speculation"]["block"] == 8


def test_on_a_remote_server_the_drafter_is_not_settable_and_the_record_says_so():
    settings = Settings(base_url="http://fake.invalid/v1", model="oracle", draft_model="draft")
    record = TaskRecord(id=1, domain="math", task="What is 12 * 8?")
    reasoner = Reasoner(ReasoningOptions(step_drafting="never"))
    asyncio.run(reasoner.process(record, StageContext(settings, lambda: None, record)))
    assert record.reasoning["speculation"]["method"] == "none"
    assert record.reasoning["speculation"]["settable"] is False


@pytest.mark.model
def test_on_the_engine_the_stage_calibrates_steps_aside_and_drafts_tokens(engine_settings):
    coding = {"id": "c1", "domain": "coding", "task": "def add(a: int, b: int) -> int:\n    \"\"\"Return a + b.\"\"\"\n"}
    disabled = dict(coding, id="c2", config={"disabled": ["spec-reasoner"]})
    out = io.StringIO()
    source = io.StringIO(json.dumps(coding) + "\n" + json.dumps(disabled) + "\n")
    settings = fresh_calibrations(engine_settings)  # nothing measured yet: this record's stage measures it
    assert reason_stream(ReasoningOptions(k=2), source=source, sink=out, settings=settings, concurrency=1) == 0
    first, second = [json.loads(line) for line in out.getvalue().splitlines()]
    drafting = first["reasoning"]["step_drafting"]
    # smollm2-135m drafting for itself: no faster than the oracle, so drafting cannot pay whatever it verifies
    assert drafting["used"] is False
    assert "costs more than it saves" in drafting["reason"] or "cannot tell" in drafting["reason"]
    assert set(drafting["discrimination"]) == {"rating", "logprob"}
    served = first["trace"][-1]["served"]
    assert served["drafted_tokens"] > 0  # its oracle calls measured each block drafter on coding prompts
    assert first["reasoning"]["speculation"]["method"] in ("ngram", "suffix", "none")
    assert second["reasoning"] == {"speculation": {"method": "none", "block": None, "reason": "spec-reasoner is "
                                                   "disabled", "settable": True, "measured_acceptance": None}}
    assert second["trace"][-1]["status"] == "baseline" and second["trace"][-1]["served"] is None
    folder = engine_settings.cache_dir / "calibrations"  # shared by private engines, like the models
    assert len(list(folder.glob("spec-reasoner-calibration-*.json"))) == 1  # measured once, kept for the next
    drafters = json.loads(next(folder.glob("spec-reasoner-drafters-*.json")).read_text())
    assert set(drafters["domains"]["coding"]) == {"ngram", "suffix"}
