from mimo_core.prompts import SYSTEM_PROMPTS, build_messages, shared_prefix
from mimo_core.record import DOMAINS, TaskRecord


def _record(domain="math"):
    return TaskRecord(id="r1", domain=domain, task="What is 12 * 8?", reference={"answer": "96"})


def test_every_domain_has_a_system_prompt():
    assert set(SYSTEM_PROMPTS) == set(DOMAINS)


def test_prefix_is_system_then_task_and_never_the_reference():
    prefix = shared_prefix(_record())
    assert [m["role"] for m in prefix] == ["system", "user"]
    assert prefix[1]["content"] == "What is 12 * 8?"
    assert "96" not in str(prefix)


def test_stage_turns_come_after_an_identical_prefix():
    a = build_messages(_record(), {"role": "assistant", "content": "draft"})
    b = build_messages(_record(), {"role": "user", "content": "verify"})
    assert a[:2] == b[:2] == shared_prefix(_record())
    assert a[2]["content"] == "draft"
