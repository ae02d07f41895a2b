"""Prompt datasets: built-in sets, text files (one prompt per line) and JSONL files with metadata."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from flowalign.errors import ConfigError
from flowalign.resources import resolve


def _toy(split: str) -> list[str]:
    from flowalign.toy.prompts import split_prompts

    return list(split_prompts(split))


BUILTIN = {"toy:train": lambda: _toy("train"), "toy:heldout": lambda: _toy("heldout")}


@dataclass
class PromptSet:
    """Prompts with one metadata dict each (empty for text files)."""

    prompts: list[str]
    metadata: list[dict]

    def __len__(self) -> int:
        return len(self.prompts)

    def sample(self, n: int, generator: torch.Generator) -> tuple[list[str], list[dict]]:
        """``n`` prompts drawn without replacement while possible (then with), reproducible by ``generator``."""
        order = torch.cat([torch.randperm(len(self), generator=generator) for _ in range(-(-n // len(self)))])[:n]
        return [self.prompts[i] for i in order], [self.metadata[i] for i in order]

    def head(self, n: int | None) -> PromptSet:
        return self if n is None else PromptSet(self.prompts[:n], self.metadata[:n])


def load_prompts(source: str) -> PromptSet:
    """A built-in name, a .txt file or a .jsonl file → PromptSet, with clear errors."""
    if source in BUILTIN:
        prompts = BUILTIN[source]()
        return PromptSet(prompts, [{} for _ in prompts])
    path = Path(resolve(source))  # a missing relative path to shipped data means the shipped copy
    if not path.is_file():
        raise ConfigError(f"prompt file {source!r} does not exist (built-in sets: {', '.join(BUILTIN)})")
    if path.suffix == ".jsonl":
        prompts, metadata = [], []
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ConfigError(f"{path}:{number}: not valid JSON ({err.msg})") from err
            if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
                raise ConfigError(f"{path}:{number}: each line needs a string field 'prompt'")
            prompts.append(row.pop("prompt"))
            metadata.append(row)
    else:
        prompts = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        metadata = [{} for _ in prompts]
    if not prompts:
        raise ConfigError(f"prompt file {source!r} holds no prompts")
    return PromptSet(prompts, metadata)
