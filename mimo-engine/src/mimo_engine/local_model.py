"""A user's own GGUF file as a model: `--model PATH.gguf` (or MIMO_MODEL=PATH.gguf) where a registry name would go.

It is served under its absolute path (`mimo_core.settings.served_model_name`): unlike its file name, that never
collides with a registry model or with another file, and the shared engine can be started again with it. It is
checked before it is served, so a file the engine cannot run is refused at once in one line naming what it holds, and
it is loaded from where it is, never pulled.
"""

from __future__ import annotations

from pathlib import Path

from mimo_core.settings import is_model_path, served_model_name
from mimo_engine.registry import UnknownModelError, get_spec


class ModelFileError(ValueError):
    """A path given as a model that is not a GGUF file the engine can serve; the message names the path."""


def resolve_model(reference: str) -> str:
    """The name `reference` is served under: a registry name as it is, or the absolute path of a GGUF file the
    engine can run (`check_gguf`). UnknownModelError or ModelFileError otherwise, in one line."""
    if is_model_path(reference):
        path = served_model_name(reference)
        check_gguf(Path(path))
        return path
    try:
        return get_spec(reference).name
    except UnknownModelError as exc:
        raise UnknownModelError(f"{exc}; or a path to a GGUF file") from None


def check_gguf(path: Path) -> None:
    """ModelFileError unless `path` is a GGUF file whose architecture and tokenizer the engine implements: what
    loading it reads before the weights, read the same way."""
    from mimo_engine.gguf_model import GGUFFile, UnsupportedModelError, read_config  # the model stack: not for --help
    from mimo_engine.tokenizer import Tokenizer

    try:
        with path.open("rb") as file:
            magic = file.read(4)
    except OSError as exc:
        raise ModelFileError(f"{path}: {exc.strerror}") from None
    if magic != b"GGUF":
        raise ModelFileError(f"{path}: not a GGUF file")
    try:
        reader = GGUFFile(path)
        read_config(reader)
        Tokenizer.from_gguf(reader)
    except UnsupportedModelError as exc:
        raise ModelFileError(f"{path}: {exc}") from None
    except (ValueError, KeyError, IndexError) as exc:  # a truncated or damaged file
        raise ModelFileError(f"{path}: not a readable GGUF file: {exc}") from None
