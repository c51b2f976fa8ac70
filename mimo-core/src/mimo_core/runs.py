"""A runs file: one JSON line per finished run, appended and synced as each finishes, so that an interrupted
benchmark loses nothing and `--resume` goes on from what it kept."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

from .contract import Contract

R = TypeVar("R", bound=Contract)


@dataclass(frozen=True)
class RunsFile(Generic[R]):
    """The runs of `path`, each read with `read(line, line_no)` and known by `key`; `keep` says which to keep."""

    path: Path
    read: Callable[[str, int], R]
    key: Callable[[R], Hashable]
    keep: Callable[[R], bool] = lambda run: True

    def load(self) -> list[R]:
        """The runs kept: a last line torn by a kill (no newline yet) is dropped, a run `keep` refuses is dropped to
        be run again, and of a repeat the first is kept; any other bad line is an error (whatever `read` raises).
        The file is rewritten atomically when anything was dropped, so that appends follow whole lines only."""
        if not self.path.is_file():
            return []
        text = self.path.read_text(encoding="utf-8")
        lines = text.splitlines()
        whole = not text or text.endswith("\n")
        kept: dict[Hashable, tuple[str, R]] = {}
        for line_no, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                run = self.read(line, line_no)
            except ValueError:
                if line_no == len(lines) and not whole:
                    continue  # the job was killed while writing this line
                raise
            if self.keep(run):
                kept.setdefault(self.key(run), (line, run))
        if len(kept) != sum(bool(line.strip()) for line in lines) or not whole:
            tmp = self.path.with_suffix(".tmp")
            with open(tmp, "w", encoding="utf-8") as out:
                out.write("".join(line + "\n" for line, _ in kept.values()))
                os.fsync(out.fileno())
            os.replace(tmp, self.path)
        return [run for _, run in kept.values()]

    def start(self, resume: bool) -> list[R]:
        """What `load` keeps with `resume`; else a new, empty file (an old one's runs are dropped)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume:
            return self.load()
        self.path.write_text("", encoding="utf-8")
        return []

    def append(self, run: R) -> None:
        """Add one finished run, on disk before this returns."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as out:
            out.write(json.dumps(run.to_dict(), ensure_ascii=False) + "\n")
            out.flush()
            os.fsync(out.fileno())
