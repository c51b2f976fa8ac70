from pathlib import Path

import pytest

from mimo_core.settings import ENGINE_ORACLE_MODEL, SettingsError, load_settings


def test_defaults_use_the_embedded_engine(tmp_path):
    s = load_settings(env={}, dotenv_path=tmp_path / "missing.env")
    assert s.embedded and s.send_extensions
    assert s.oracle_model == ENGINE_ORACLE_MODEL
    assert s.drafter_model == "smollm2-135m"
    assert s.cache_dir.name == "mimo-pipeline"


def test_precedence_flag_env_dotenv_yaml_default(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("MIMO_MODEL: from-yaml\nconcurrency: 3\ntimeout_s: 9\nMIMO_MAX_RETRIES: 5\n")
    dotenv = tmp_path / ".env"
    dotenv.write_text("MIMO_MODEL=from-dotenv\nMIMO_CONCURRENCY=6\nMIMO_TIMEOUT_S=11\n")
    env = {"MIMO_MODEL": "from-env", "MIMO_CONCURRENCY": "8"}
    s = load_settings(overrides={"model": "from-flag"}, config_file=config, env=env, dotenv_path=dotenv)
    assert s.model == "from-flag"  # flag beats everything
    assert s.concurrency == 8  # env beats .env and yaml
    assert s.timeout_s == 11.0  # .env beats yaml
    assert s.max_retries == 5  # yaml beats the default
    assert load_settings(overrides={"model": None}, env=env, dotenv_path=dotenv).model == "from-env"


@pytest.mark.parametrize(
    "variable, value",
    [
        ("MIMO_CONCURRENCY", "many"),
        ("MIMO_CONCURRENCY", "0"),
        ("MIMO_TIMEOUT_S", "-1"),
        ("MIMO_MAX_RETRIES", "1.5"),
        ("MIMO_BASE_URL", "localhost:8000"),
        ("MIMO_ENGINE_EXTENSIONS", "maybe"),
        ("MIMO_PRECISION_POLICIES", "native;mxfp4"),
        ("MIMO_PRECISION_POLICIES", "native,,mxfp4"),
        ("MIMO_PRECISION_POLICIES", "all,native"),
        ("MIMO_ENGINE_THREADS", "0"),
        ("MIMO_ENGINE_THREADS", "two"),
    ],
)
def test_malformed_value_names_the_variable(variable, value, tmp_path):
    with pytest.raises(SettingsError) as info:
        load_settings(env={variable: value}, dotenv_path=tmp_path / "none")
    message = str(info.value)
    assert variable in message and "\n" not in message


def test_remote_needs_a_model_and_masks_the_key(tmp_path):
    env = {"MIMO_BASE_URL": "https://api.example.test/v1/", "MIMO_API_KEY": "sk-secret-123"}
    s = load_settings(env=env, dotenv_path=tmp_path / "none")
    assert not s.embedded and not s.send_extensions
    assert s.base_url == "https://api.example.test/v1"
    with pytest.raises(SettingsError, match="MIMO_MODEL"):
        _ = s.oracle_model
    shown = s.to_dict()
    assert "sk-secret-123" not in repr(shown) and "sk-secret-123" not in repr(s)
    assert shown["api_key_set"] is True and shown["backend"] == "remote"


def test_yaml_errors_are_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("nonsense_key: 1\n")
    with pytest.raises(SettingsError, match="unknown setting 'nonsense_key'"):
        load_settings(config_file=bad, env={}, dotenv_path=None)
    with pytest.raises(SettingsError, match="config file"):
        load_settings(config_file=Path(tmp_path / "absent.yaml"), env={}, dotenv_path=None)


def test_env_example_documents_every_variable():
    from mimo_core.settings import VARIABLES

    example = (Path(__file__).parents[2] / ".env.example").read_text()
    for variable in VARIABLES:
        assert f"# {variable}" in example or f"{variable}=" in example, variable


def test_to_env_gives_another_process_the_same_settings(tmp_path):
    s = load_settings(overrides={"base_url": "http://127.0.0.1:9/v1", "api_key": "k-123", "model": "m",
                                 "concurrency": 3, "engine_extensions": True, "cache_dir": tmp_path},
                      env={}, dotenv_path=None)
    env = s.to_env()
    assert load_settings(env=env, dotenv_path=None) == s
    assert env["MIMO_ENGINE_EXTENSIONS"] == "1" and "MIMO_DRAFT_MODEL" not in env  # unset stays unset


def test_with_cache_dir_keeps_the_models_and_nothing_else(tmp_path):
    s = load_settings(overrides={"cache_dir": tmp_path / "shared"}, env={}, dotenv_path=None)
    private = s.with_cache_dir(tmp_path / "private")
    assert private.cache_dir == tmp_path / "private" and private.model == s.model
    assert (tmp_path / "private" / "models").resolve() == (tmp_path / "shared" / "models").resolve()
    assert s.with_cache_dir(tmp_path / "private") == private  # again: the link is already there


def test_engine_policies_and_threads_follow_the_same_precedence(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("precision_policies: [native, mxfp4]\nMIMO_ENGINE_THREADS: 1\n")
    assert load_settings(config_file=config, env={}, dotenv_path=None).precision_policies == ("native", "mxfp4")
    dotenv = tmp_path / ".env"
    dotenv.write_text("MIMO_PRECISION_POLICIES=q8_0, entropy@5.5\nMIMO_ENGINE_THREADS=2\n")
    s = load_settings(config_file=config, env={"MIMO_ENGINE_THREADS": "3"}, dotenv_path=dotenv)
    assert s.precision_policies == ("q8_0", "entropy@5.5")  # .env beats yaml
    assert s.engine_threads == 3  # env beats .env
    flags = load_settings(overrides={"precision_policies": ("all",), "engine_threads": 1},
                          env={"MIMO_ENGINE_THREADS": "3"}, dotenv_path=dotenv)
    assert flags.precision_policies == ("all",) and flags.engine_threads == 1
    defaults = load_settings(env={}, dotenv_path=None)
    assert defaults.precision_policies is None and defaults.engine_threads is None  # the engine's own defaults
    assert load_settings(env=s.to_env(), dotenv_path=None) == s  # handed to another process unchanged
    assert s.to_env()["MIMO_PRECISION_POLICIES"] == "q8_0,entropy@5.5" and s.to_dict()["precision_policies"] == [
        "q8_0", "entropy@5.5"]


def test_a_flag_is_checked_as_its_variable_and_named_as_the_flag():
    from mimo_core.settings import parse_setting

    assert parse_setting("MIMO_PRECISION_POLICIES", "native, experts-mxfp4") == ("native", "experts-mxfp4")
    with pytest.raises(SettingsError, match="--threads"):
        parse_setting("MIMO_ENGINE_THREADS", "-2", "--threads")


def test_precision_models_are_format_model_pairs_and_go_to_a_child_process():
    settings = load_settings(env={"MIMO_PRECISION_MODELS": "fp8=mimo-fp8, mxfp4=mimo-mxfp4"}, dotenv_path=None)
    assert settings.precision_models == (("fp8", "mimo-fp8"), ("mxfp4", "mimo-mxfp4"))
    assert settings.to_dict()["precision_models"] == {"fp8": "mimo-fp8", "mxfp4": "mimo-mxfp4"}
    again = load_settings(env=settings.to_env(), dotenv_path=None)
    assert again.precision_models == settings.precision_models
    with pytest.raises(SettingsError, match="MIMO_PRECISION_MODELS.*not FORMAT=MODEL"):
        load_settings(env={"MIMO_PRECISION_MODELS": "fp8"}, dotenv_path=None)


def test_a_gguf_file_for_the_embedded_engine_is_named_by_its_absolute_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    env = {"MIMO_MODEL": "models/mine.gguf", "MIMO_DRAFT_MODEL": "~/small.gguf"}
    embedded = load_settings(env=env, dotenv_path=None)
    assert embedded.oracle_model == str(tmp_path / "models" / "mine.gguf")  # as every tool, in any folder, names it
    assert embedded.drafter_model == str(tmp_path / "home" / "small.gguf")
    assert load_settings(env=embedded.to_env(), dotenv_path=None) == embedded
    assert load_settings(env={"MIMO_MODEL": "smollm2-135m"}, dotenv_path=None).oracle_model == "smollm2-135m"
    remote = load_settings(env={**env, "MIMO_BASE_URL": "http://127.0.0.1:9/v1"}, dotenv_path=None)
    assert remote.oracle_model == "models/mine.gguf"  # a remote server's model names are its own
