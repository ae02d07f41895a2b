"""Where flowalign finds the data it ships: the toy model, the prompt sets and the recipes.

Shipped paths (``SHIPPED``), always named as in the source checkout:
``assets/toy-sd3`` (the toy SD3 pipeline), ``assets/prompts`` (``train.txt``, ``heldout.txt``) and ``configs``
(the recipes ``*.yaml`` and the architecture files ``models/*.json``).

How they ship: setup.py maps the checkout's ``assets/`` and ``configs/`` folders to the packages
``flowalign._data.assets`` and ``flowalign._data.configs``, so a wheel or a regular ``pip install .`` holds
these files under ``flowalign/_data/`` beside this module. A checkout (or an editable install of one) reads them
in place.

The rule: every shipped path lies under one root, ``data_root()``:

1. ``flowalign/_data/`` beside this module, when it exists (an installed wheel);
2. otherwise the folder above the ``flowalign`` package, when it is the flowalign source checkout (it holds the
   project's pyproject.toml).

Relative paths in recipes and on the command line (``resolve``): a path that exists is used as given (relative to
the current folder, as always); a relative path that does not exist but names a shipped path or a file inside one
(``assets/toy-sd3``, ``configs/toy_grpo.yaml``, ``./assets/prompts/train.txt``) means the shipped copy; anything
else (hub ids, other files, typos) comes back unchanged, so that the caller's error names what the user wrote.

``python -m flowalign.resources [PATH ...]`` prints the root, or where each PATH resolves to, e.g.
``flowalign sample --model "$(python -m flowalign.resources assets/toy-sd3)" --prompt "two red circles"``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path, PurePath

from flowalign.errors import FlowAlignError

#: the paths that ship with flowalign, relative to ``data_root()`` (setup.py's SHIPPED_DATA carries them)
SHIPPED: tuple[str, ...] = ("assets/toy-sd3", "assets/prompts", "configs")
#: the shipped toy model (a diffusers StableDiffusion3Pipeline folder)
TOY_MODEL = "assets/toy-sd3"
#: the recipe ``flowalign demo`` runs
DEMO_RECIPE = "configs/toy_grpo_guard.yaml"

#: the ``flowalign`` package folder (module-level so that tests can point the rule at another layout)
PACKAGE_DIR = Path(__file__).resolve().parent


def _is_source_checkout(folder: Path) -> bool:
    pyproject = folder / "pyproject.toml"
    try:
        return pyproject.is_file() and 'name = "flowalign"' in pyproject.read_text()
    except OSError:
        return False


def installed_data_dir() -> Path:
    """Where a wheel or a regular install puts the shipped data: ``flowalign/_data/``."""
    return PACKAGE_DIR / "_data"


def data_root() -> Path:
    """The folder every shipped path lies under (the rule of the module docstring). When neither layout is
    present the installed location is returned; ``shipped`` then says that the data is missing."""
    installed = installed_data_dir()
    if installed.is_dir():
        return installed
    checkout = PACKAGE_DIR.parent
    return checkout if _is_source_checkout(checkout) else installed


def _shipped_relative(path: str | os.PathLike) -> str | None:
    """``path`` in the canonical form ``assets/toy-sd3/...`` when it is relative and names a shipped path or a
    file inside one; None otherwise."""
    text = os.fspath(path)
    if not text or os.path.isabs(text) or text.startswith("~"):
        return None
    norm = PurePath(os.path.normpath(text)).as_posix()
    if any(norm == root or norm.startswith(root + "/") for root in SHIPPED):
        return norm
    return None


def shipped(relative: str) -> Path:
    """The shipped copy of ``relative`` (``"assets/toy-sd3"``, ``"configs/toy_grpo.yaml"``); errors name the
    path, where it was looked for and what ships."""
    norm = _shipped_relative(relative)
    if norm is None:
        raise FlowAlignError(f"{relative!r} is not shipped with flowalign; shipped paths: {', '.join(SHIPPED)} "
                             f"(and the files inside them)")
    path = data_root() / norm
    if not path.exists():
        raise FlowAlignError(f"shipped data {norm!r} is missing: {str(path)!r} does not exist (looked in "
                             f"{str(installed_data_dir())!r} for an installed flowalign, then in a source checkout "
                             f"at {str(PACKAGE_DIR.parent)!r}); reinstall flowalign")
    return path


def resolve(path: str | os.PathLike) -> str:
    """``path`` as given when it exists or names nothing shipped; else the shipped copy it names (see the
    module docstring)."""
    text = os.fspath(path)
    if os.path.exists(text):
        return text
    norm = _shipped_relative(text)
    if norm is None:
        return text
    candidate = data_root() / norm
    return str(candidate) if candidate.exists() else text


def main(argv: list[str] | None = None) -> int:
    """Print the data root, or what each argument resolves to (one line each)."""
    argv = sys.argv[1:] if argv is None else argv
    for line in [resolve(p) for p in argv] if argv else [str(data_root())]:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
