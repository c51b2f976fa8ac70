"""benchmarks/versus_llamacpp.py's figures from known streams and rounds (no server)."""

import pytest


@pytest.fixture(scope="module")
def versus(benchmark_script):
    return benchmark_script("versus_llamacpp")


def _rounds(rates: dict[str, list[float]]) -> list[dict]:
    return [{"round": r + 1, "configuration": name, "decode_tokens_per_s": rate, "ttft_s": 0.1 * (r + 1)}
            for name, values in rates.items() for r, rate in enumerate(values)]


def test_summary_takes_medians_and_measures_against_llama_cpp_single_stream(versus):
    rounds = _rounds({"mimo-engine, 1 stream": [40.0, 50.0, 45.0], "llama.cpp, 1 stream": [100.0, 90.0, 80.0],
                      "mimo-engine, 8 streams": [300.0, 280.0, 260.0], "llama.cpp, 8 streams": [70.0, 75.0, 72.0]})
    summary = versus.summarize(rounds)
    assert summary["decode_tokens_per_s"] == {"mimo-engine, 1 stream": 45.0, "llama.cpp, 1 stream": 90.0,
                                              "mimo-engine, 8 streams": 280.0, "llama.cpp, 8 streams": 72.0}
    assert summary["decode_tokens_per_s_range"]["llama.cpp, 1 stream"] == [80.0, 100.0]
    assert summary["ttft_s"]["mimo-engine, 8 streams"] == pytest.approx(0.2)
    assert summary["ratios"] == {"engine 1 stream / llama.cpp 1 stream": 0.5,
                                 "engine 8 streams / llama.cpp 1 stream": pytest.approx(3.111, abs=1e-3)}
    assert summary["goals_met"] == {"engine 1 stream / llama.cpp 1 stream": False,
                                    "engine 8 streams / llama.cpp 1 stream": True}
    assert summary["every_round"] == rounds


def test_the_chart_is_written(versus, tmp_path):
    rounds = _rounds({c: [10.0 * (i + 1)] for i, c in enumerate(versus.CONFIGURATIONS)})
    result = {"engine_policy": "native", "threads": 2, "cpu_model": "test CPU",
              "models": {"a": versus.summarize(rounds), "b": versus.summarize(rounds)}}
    versus.plot(result, tmp_path / "chart.png")
    assert (tmp_path / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
