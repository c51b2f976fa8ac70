import json

import pytest
from typer.testing import CliRunner

from mimo_core.cli import app

runner = CliRunner()


def test_config_resolves_models_and_never_shows_the_key(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    env = {"MIMO_BASE_URL": "https://example.test/v1", "MIMO_API_KEY": "sk-hidden-42", "MIMO_MODEL": "big"}
    result = runner.invoke(app, ["config"], env=env)
    assert result.exit_code == 0
    assert "sk-hidden-42" not in result.output
    shown = json.loads(result.output)
    assert shown["api_key_set"] is True and shown["resolved"] == {"oracle_model": "big", "draft_model": "big"}


def test_bad_settings_exit_2_with_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["config"], env={"MIMO_TIMEOUT_S": "soon"})
    assert result.exit_code == 2
    assert "MIMO_TIMEOUT_S" in result.output


def test_check_reports_an_unreachable_endpoint_with_exit_1(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    env = {"MIMO_BASE_URL": "http://127.0.0.1:9/v1", "MIMO_MODEL": "m", "MIMO_MAX_RETRIES": "0"}
    result = runner.invoke(app, ["config", "--check"], env=env)
    assert result.exit_code == 1
    assert json.loads(result.output)["check"]["reachable"] is False


def test_profiles_and_an_unknown_profile():
    assert "h200" in json.loads(runner.invoke(app, ["profiles"]).output)
    assert json.loads(runner.invoke(app, ["profile", "h200"]).output)["hbm_bytes"] == 141e9
    result = runner.invoke(app, ["profile", "abacus"])
    assert result.exit_code == 2 and "unknown hardware profile" in result.output


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.startswith("mimo-core ")


@pytest.mark.model
def test_check_says_when_it_starts_the_background_engine(private_engine, monkeypatch):
    settings = private_engine(draft_model="smollm2-135m", engine_idle_timeout_s=60.0)
    monkeypatch.chdir(settings.cache_dir)
    env = {"MIMO_CACHE_DIR": str(settings.cache_dir), "MIMO_MODEL": settings.model,
           "MIMO_DRAFT_MODEL": settings.draft_model, "MIMO_ENGINE_IDLE_TIMEOUT_S": "60"}
    first = runner.invoke(app, ["config", "--check"], env=env)
    second = runner.invoke(app, ["config", "--check"], env=env)
    assert first.exit_code == 0, first.output
    engine = json.loads(first.stdout)["check"]["engine"]
    assert engine["started"] is True and engine["idle_timeout_s"] == 60
    assert f"started the embedded engine in the background (pid {engine['pid']}" in first.stderr
    assert json.loads(second.stdout)["check"]["engine"] == dict(engine, started=False)
    assert "started" not in second.stderr
