"""A user's own GGUF file named by its path: the name it is served under, `serve --model PATH` end to end with the
file's tokenizer and chat template, MIMO_MODEL=PATH through the shared engine (or its refusal), and the file's own
identity to the KV cache."""

import os
import re

import httpx
import pytest
from mimo_core import daemon
from mimo_core.settings import load_settings
from mimo_core.testing import TEST_MODEL as MODEL
from mimo_engine.local_model import ModelFileError, resolve_model
from mimo_engine.registry import MODELS, UnknownModelError
from mimo_engine.runtime import LoadedModel
from mimo_engine.server import ServerOptions, served_models

SAY_HI = [{"role": "user", "content": "Say hi."}]


def test_a_path_is_served_under_its_absolute_path_and_a_name_as_it_is(user_gguf, unsupported_gguf, monkeypatch):
    monkeypatch.setenv("HOME", str(user_gguf.parent))
    assert resolve_model(f"~/{user_gguf.name}") == str(user_gguf)
    assert resolve_model(MODEL) == MODEL
    with pytest.raises(UnknownModelError, match="or a path to a GGUF file"):
        resolve_model("my-finetune")
    with pytest.raises(ModelFileError, match=f"^{re.escape(str(unsupported_gguf))}: GGUF architecture 'gemma2'"):
        resolve_model(str(unsupported_gguf))


def test_every_registry_model_with_allow_pull_leaves_the_named_files_served():
    served = served_models(["/models/a.gguf"], ServerOptions(allow=("/models/b.gguf",), allow_pull=True))
    assert served == {"/models/a.gguf", "/models/b.gguf", *MODELS}


@pytest.mark.model
def test_serve_a_gguf_file_by_its_path(start_server, user_gguf):
    server = start_server("--model", os.path.relpath(user_gguf), "--precision-policies", "native")
    name = str(user_gguf)  # a relative path is served under the absolute one
    health = httpx.get(f"{server.url}/health").json()
    assert health["models_served"] == [name] and health["models"][name]["state"] == "ready"
    assert [m["id"] for m in httpx.get(f"{server.url}/v1/models").json()["data"]] == [name]
    ask = {"model": name, "messages": SAY_HI, "max_tokens": 4, "temperature": 0}
    reply = httpx.post(f"{server.url}/v1/chat/completions", json=ask, timeout=300)  # the file's own chat template
    assert reply.status_code == 200, reply.text
    assert reply.json()["model"] == name and reply.json()["choices"][0]["message"]["content"]
    other = httpx.post(f"{server.url}/v1/chat/completions", json={**ask, "model": str(user_gguf.parent)})
    assert other.status_code == 404 and "GGUF file named with --model" in other.json()["error"]["message"]
    assert f"loaded: {name};" in server.log()


@pytest.mark.model
def test_mimo_model_names_a_gguf_file_for_the_shared_engine(private_engine, user_gguf, monkeypatch):
    monkeypatch.chdir(user_gguf.parent)
    settings = private_engine(model=user_gguf.name, draft_model=MODEL, precision_policies=("native",))
    assert settings.oracle_model == str(user_gguf)  # what every tool sends, whatever its folder
    url = daemon.ensure_engine(settings)
    assert daemon.engine_health(daemon.read_state(settings)).models_served == [str(user_gguf), MODEL]
    ask = {"model": settings.oracle_model, "messages": SAY_HI, "max_tokens": 2}
    reply = httpx.post(f"{url}/chat/completions", json=ask, timeout=300)
    assert reply.status_code == 200 and reply.json()["model"] == str(user_gguf)


def test_a_gguf_file_the_shared_engine_cannot_run_is_an_error_naming_it(private_engine, unsupported_gguf):
    settings = private_engine(model=str(unsupported_gguf))
    with pytest.raises(daemon.EngineError, match=f"{re.escape(str(unsupported_gguf))}: GGUF architecture 'gemma2'"):
        daemon.ensure_engine(settings)


@pytest.mark.model
def test_a_gguf_file_is_a_model_of_its_own_to_the_kv_cache(user_gguf):
    model = LoadedModel.load(str(user_gguf), load_settings().cache_dir, policies=("native",))
    stat = user_gguf.stat()
    # the same bytes as the registry's smollm2-135m, yet never its cached blocks: a file is its path, size and time
    assert model.fingerprint.startswith(f"{user_gguf.resolve()}:{stat.st_size}:{stat.st_mtime_ns}:")
    assert MODELS[MODEL].sha256 not in model.fingerprint
