import pytest

from mimo_core.contract import ContractError
from mimo_core.extensions import CacheReport, MimoReport, MimoRequest, figures


def test_a_request_extension_round_trips_and_defaults_to_cache_on():
    data = {"precision": {"policy": "native"}, "cache": {"enabled": False},
            "speculation": {"method": "ngram", "block": 4}}
    request = MimoRequest.from_dict(data, "mimo")
    assert not request.cache_enabled and request.speculation.block == 4
    assert MimoRequest.from_dict(request.to_dict()) == request
    assert MimoRequest.from_dict({}).cache_enabled


@pytest.mark.parametrize("data, message", [
    ({"cache": {"enabled": False, "pin": True}}, "mimo.cache: unknown field 'pin'"),
    ({"caches": {}}, "mimo: unknown field 'caches'"),
    ({"cache": {"enabled": "no"}}, "mimo.cache.enabled: must be a boolean, not a string"),
    ({"speculation": {"method": "medusa"}}, "mimo.speculation.method: 'medusa' is not one of"),
    ({"speculation": {"method": "ngram", "block": 0}}, "mimo.speculation: speculation.block must be 1..16"),
    ([], "mimo: must be an object, not a list"),
])
def test_a_bad_request_extension_says_where(data, message):
    with pytest.raises(ContractError) as info:
        MimoRequest.from_dict(data, "mimo")
    assert str(info.value).startswith(message)


def test_the_report_declares_its_metrics_once():
    names = {f.name: f.metadata["metric"] for f in figures(MimoReport)}
    assert names["prompt_tokens"] == "counter" and names["time_to_first_token_s"] == "histogram"
    assert "batch_sizes" not in names and {f.name for f in figures(CacheReport)} == {
        "cached_tokens", "prefilled_tokens", "hbm_hit_tokens", "dram_hit_tokens", "disk_hit_tokens"}
    report = MimoReport(model="m", prompt_tokens=3, cache=CacheReport(cached_tokens=2, prefilled_tokens=1))
    assert MimoReport.from_dict(report.to_dict()) == report and report.to_dict()["schema"] == "mimo.engine-report/1"


def test_reports_of_several_prompts_combine_counts_and_take_the_longest_times():
    a = MimoReport(model="m", prompt_tokens=3, completion_tokens=2, duration_s=1.5, batch_sizes=[1],
                   cache=CacheReport(cached_tokens=16, prefilled_tokens=1))
    b = MimoReport(model="m", prompt_tokens=4, completion_tokens=5, duration_s=2.5, batch_sizes=[2],
                   cache=CacheReport(cached_tokens=0, prefilled_tokens=4))
    both = MimoReport.combine([a, b])
    assert (both.prompt_tokens, both.completion_tokens, both.duration_s, both.batch_sizes) == (7, 7, 2.5, [1, 2])
    assert (both.cache.cached_tokens, both.cache.prefilled_tokens, both.cache.enabled) == (16, 5, True)
