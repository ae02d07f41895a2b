"""The phrasings of an erased concept: the concept, its aliases and their English singular / plural forms.

An SPM erases every phrasing of its concept: training takes as targets the prompts naming any of them (and builds
surrogates with all of them removed), facilitated transport takes the maximum over them. Matching is whole-word
and case-insensitive; a phrase of several words is inflected on its last word only.

Inflection rule (small and regular on purpose; irregular forms, e.g. "mouse"/"mice", go in as aliases):
- plural of a word: ``-s``/``-x``/``-z``/``-ch``/``-sh`` → ``+es`` ("box" → "boxes"); consonant + ``y`` →
  ``-ies`` ("puppy" → "puppies"); otherwise ``+s`` ("dog" → "dogs", "triangle" → "triangles");
- singular of a word: ``-ies`` → ``-y``; ``-sses``/``-xes``/``-zes``/``-ches``/``-shes`` → drop ``es`` ("boxes" →
  "box"); other ``-s`` (not ``-ss``/``-us``/``-is``) → drop ``s`` ("triangles" → "triangle", "horses" → "horse").
- a word gets the singular when it differs from it, else the plural ("dogs" → "dog"; "dog" → "dogs").
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from flowalign.errors import ConfigError

_SIBILANT = ("s", "x", "z", "ch", "sh")
_VOWELS = "aeiou"


def _plural(word: str) -> str:
    if word.endswith(_SIBILANT):
        return word + "es"
    if len(word) > 1 and word.endswith("y") and word[-2] not in _VOWELS:
        return word[:-1] + "ies"
    return word + "s"


def _singular(word: str) -> str:
    if len(word) > 3 and word.endswith("ies"):
        return word[:-3] + "y"
    if word.endswith(("sses", "xes", "zes", "ches", "shes")) and len(word) > 4:
        return word[:-2]
    if len(word) > 2 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def inflections(phrase: str) -> list[str]:
    """The singular and plural forms of ``phrase``'s last word that differ from it (rule in the module doc)."""
    head, _, last = phrase.strip().rpartition(" ")
    if not last.isalpha():
        return []
    forms = []
    for form in (_singular(last), _plural(last) if _singular(last) == last else None):
        if form and form != last:
            forms.append(f"{head} {form}" if head else form)
    return forms


def phrasings(concept: str, aliases: Iterable[str] = (), inflect: bool = True) -> list[str]:
    """``concept`` first, then its aliases, then (``inflect``) the inflections of each; no duplicates (case- and
    space-insensitive), every entry stripped and non-empty."""
    out, seen = [], set()
    base = [concept, *aliases]
    for phrase in base + [f for p in base for f in (inflections(p) if inflect else [])]:
        phrase = " ".join(str(phrase).split())
        if not phrase:
            raise ConfigError(f"concept {concept!r} has an empty alias; aliases must be non-empty text")
        if phrase.lower() not in seen:
            seen.add(phrase.lower())
            out.append(phrase)
    return out


def pattern(phrases: Sequence[str]) -> re.Pattern:
    """Whole-word, case-insensitive regex of any of ``phrases`` (longest first, so "red fox" wins over "red";
    the spaces inside a phrase match any run of whitespace)."""
    if not phrases:
        raise ConfigError("a concept needs at least one phrasing")
    alternatives = sorted({r"\s+".join(map(re.escape, p.split())) for p in phrases}, key=len, reverse=True)
    return re.compile(rf"\b(?:{'|'.join(alternatives)})\b", re.IGNORECASE)


def names(prompt: str, phrases: Sequence[str]) -> bool:
    """Whether ``prompt`` contains any of ``phrases`` as whole words."""
    return pattern(phrases).search(prompt) is not None


def remove(prompt: str, phrases: Sequence[str], replacement: str = "") -> str:
    """``prompt`` with every occurrence of every phrase replaced by ``replacement`` (whitespace collapsed)."""
    return " ".join(pattern(phrases).sub(replacement, prompt).split())
