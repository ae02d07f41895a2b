"""Prompt grammar of the shapes world, and its FIXED train / held-out splits.

Grammar (lower case, single spaces)::

    prompt   := objects | relation
    objects  := clause | clause " and " clause          (distinct colour×shape, total count <= 4)
    clause   := count " " colour " " shape["s"]          (plural iff count > 1)
    relation := "a " colour " " shape " " rel " a " colour " " shape
    count    := "a" | "one" | "two" | "three" | "four"
    rel      := "left of" | "right of" | "above" | "below"

Held out (never in the train split): the count clauses (colour, shape, n) with n >= 2 and
(colour_index + shape_index + n) % 3 == 0, in any prompt, and the relation prompts whose
(subject, rel, object) indices satisfy (cs + ss + 2·r + co + 2·so) % 5 == 0.
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flowalign.errors import FlowAlignError
from flowalign.resources import data_root

COLORS: tuple[str, ...] = ("red", "green", "blue", "yellow")
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
COUNT_WORDS: dict[str, int] = {"a": 1, "one": 1, "two": 2, "three": 3, "four": 4}
NUMBER_WORDS: tuple[str, ...] = ("", "a", "two", "three", "four")
MAX_OBJECTS = 4
PROMPTS_DIR = data_root() / "assets" / "prompts"  # the shipped split files (flowalign.resources)


class PromptParseError(FlowAlignError):
    """A prompt is outside the shapes-world grammar."""


@dataclass(frozen=True)
class ObjectClause:
    """``count`` shapes of one colour and kind."""

    color: str
    shape: str
    count: int


@dataclass(frozen=True)
class Relation:
    """Subject (objects[0]) ``relation`` object (objects[1])."""

    relation: str
    subject: int = 0
    object: int = 1


@dataclass(frozen=True)
class ParsedPrompt:
    """The structured description of a prompt: its object clauses and an optional spatial relation."""

    text: str
    objects: tuple[ObjectClause, ...]
    relation: Relation | None = None

    @property
    def kind(self) -> str:
        if self.relation is not None:
            return "relation"
        return "count" if len(self.objects) == 1 else "pair"

    @property
    def total_count(self) -> int:
        return sum(o.count for o in self.objects)

    def names(self, word: str) -> bool:
        """Whether an object of the prompt has colour or shape ``word`` ("red", "circle")."""
        return any(word in (o.color, o.shape) for o in self.objects)


def clause_text(clause: ObjectClause) -> str:
    plural = "s" if clause.count > 1 else ""
    return f"{NUMBER_WORDS[clause.count]} {clause.color} {clause.shape}{plural}"


def make_prompt(objects: list[ObjectClause] | tuple[ObjectClause, ...], relation: str | None = None) -> ParsedPrompt:
    """Build (and validate) a prompt from its structure; the text is the canonical rendering."""
    objects = tuple(objects)
    if relation is None:
        text = " and ".join(clause_text(o) for o in objects)
    else:
        if len(objects) != 2 or any(o.count != 1 for o in objects):
            raise PromptParseError(f"a relation needs exactly two single objects, got {objects}")
        text = f"{clause_text(objects[0])} {relation} {clause_text(objects[1])}"
    parsed = ParsedPrompt(text, objects, Relation(relation) if relation is not None else None)
    _validate(parsed)
    return parsed


def _parse_clause(words: list[str], prompt: str) -> ObjectClause:
    if len(words) != 3:
        raise PromptParseError(f"prompt {prompt!r}: expected '<count> <colour> <shape>', got {' '.join(words)!r}")
    count_word, color, shape_word = words
    if count_word not in COUNT_WORDS:
        raise PromptParseError(f"prompt {prompt!r}: unknown count {count_word!r}; allowed: {', '.join(COUNT_WORDS)}")
    if color not in COLORS:
        raise PromptParseError(f"prompt {prompt!r}: unknown colour {color!r}; allowed: {', '.join(COLORS)}")
    count = COUNT_WORDS[count_word]
    shape = shape_word[:-1] if shape_word.endswith("s") else shape_word
    if shape not in SHAPES:
        raise PromptParseError(f"prompt {prompt!r}: unknown shape {shape_word!r}; allowed: {', '.join(SHAPES)}")
    if (count > 1) != shape_word.endswith("s"):
        raise PromptParseError(f"prompt {prompt!r}: {count_word!r} does not agree with {shape_word!r}")
    return ObjectClause(color, shape, count)


def _validate(parsed: ParsedPrompt) -> None:
    keys = [(o.color, o.shape) for o in parsed.objects]
    if len(set(keys)) != len(keys):
        raise PromptParseError(f"prompt {parsed.text!r}: the same colour and shape appear in two clauses")
    if parsed.total_count > MAX_OBJECTS:
        raise PromptParseError(f"prompt {parsed.text!r}: {parsed.total_count} shapes, at most {MAX_OBJECTS} allowed")


@functools.lru_cache(maxsize=65536)
def parse_prompt(prompt: str) -> ParsedPrompt:
    """Parse a prompt of the grammar; raises ``PromptParseError`` naming the prompt otherwise."""
    if not isinstance(prompt, str):
        raise PromptParseError(f"prompt must be a string, got {type(prompt).__name__}: {prompt!r}")
    words = prompt.strip().lower().split()
    if not words:
        raise PromptParseError(f"prompt {prompt!r} is empty")
    text = " ".join(words)
    for rel in RELATIONS:
        rel_words = rel.split()
        for i in range(len(words) - len(rel_words) + 1):
            if words[i : i + len(rel_words)] == rel_words and i == 3:
                a = _parse_clause(words[:3], prompt)
                b = _parse_clause(words[3 + len(rel_words) :], prompt)
                if a.count != 1 or b.count != 1:
                    raise PromptParseError(f"prompt {prompt!r}: relations take single objects ('a <colour> <shape>')")
                parsed = ParsedPrompt(text, (a, b), Relation(rel))
                _validate(parsed)
                return parsed
    parts = " ".join(words).split(" and ")
    if len(parts) > 2:
        raise PromptParseError(f"prompt {prompt!r}: at most two clauses joined by 'and'")
    parsed = ParsedPrompt(text, tuple(_parse_clause(p.split(), prompt) for p in parts))
    _validate(parsed)
    return parsed


# --- splits -----------------------------------------------------------------------------------------------
def is_heldout_clause(clause: ObjectClause) -> bool:
    ci, si = COLORS.index(clause.color), SHAPES.index(clause.shape)
    return clause.count >= 2 and (ci + si + clause.count) % 3 == 0


def is_heldout(parsed: ParsedPrompt) -> bool:
    """Whether a prompt belongs to the held-out side (see the module docstring)."""
    if parsed.relation is not None:
        (a, b), r = parsed.objects, RELATIONS.index(parsed.relation.relation)
        cs, ss, co, so = COLORS.index(a.color), SHAPES.index(a.shape), COLORS.index(b.color), SHAPES.index(b.shape)
        return (cs + ss + 2 * r + co + 2 * so) % 5 == 0
    return any(is_heldout_clause(o) for o in parsed.objects)


@functools.lru_cache(maxsize=1)
def all_prompts() -> tuple[ParsedPrompt, ...]:
    """Every prompt of the grammar, canonical form, in a fixed order."""
    kinds = list(itertools.product(COLORS, SHAPES))
    out = [make_prompt([ObjectClause(c, s, n)]) for n in range(1, 5) for c, s in kinds]
    for (c1, s1), (c2, s2) in itertools.permutations(kinds, 2):
        for n1, n2 in itertools.product(range(1, 4), repeat=2):
            if n1 + n2 <= MAX_OBJECTS:
                out.append(make_prompt([ObjectClause(c1, s1, n1), ObjectClause(c2, s2, n2)]))
    for (c1, s1), (c2, s2) in itertools.permutations(kinds, 2):
        for rel in RELATIONS:
            out.append(make_prompt([ObjectClause(c1, s1, 1), ObjectClause(c2, s2, 1)], rel))
    return tuple(out)


@functools.lru_cache(maxsize=1)
def train_prompts() -> tuple[str, ...]:
    """All prompts on the train side (pretraining and RL)."""
    return tuple(p.text for p in all_prompts() if not is_heldout(p))


HELDOUT_PER_KIND = 24


@functools.lru_cache(maxsize=1)
def heldout_prompts() -> tuple[str, ...]:
    """The fixed held-out evaluation set: 24 count, 24 pair and 24 relation prompts (seeded choice)."""
    rng = np.random.default_rng(20240601)
    out: list[str] = []
    for kind in ("count", "pair", "relation"):
        pool = [p.text for p in all_prompts() if is_heldout(p) and p.kind == kind]
        idx = rng.choice(len(pool), size=min(HELDOUT_PER_KIND, len(pool)), replace=False)
        out.extend(pool[i] for i in sorted(idx))
    return tuple(out)


def split_prompts(split: str) -> tuple[str, ...]:
    if split == "train":
        return train_prompts()
    if split == "heldout":
        return heldout_prompts()
    raise FlowAlignError(f"unknown prompt split {split!r}; allowed: train, heldout")


def write_split_files(directory: Path = PROMPTS_DIR) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for split in ("train", "heldout"):
        (directory / f"{split}.txt").write_text("\n".join(split_prompts(split)) + "\n")
