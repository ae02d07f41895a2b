"""An installed flowalign works outside the checkout, and installs are pinned.

The wheel is built from a copy of the build inputs (pip builds in the source folder, and the checkout is shared),
without build isolation and without an index, then installed with ``--no-deps --target`` into a temporary folder.
The commands run with this interpreter (whose site-packages hold the dependencies), that folder first on
PYTHONPATH and another temporary folder as the current one, so only the installed copy can be imported.
"""

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from importlib.metadata import PathDistribution
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from flowalign.resources import SHIPPED

ROOT = Path(__file__).resolve().parents[1]
BUILD_INPUTS = ("pyproject.toml", "setup.py", "README.md", "flowalign", "reward_models", "assets", "configs")
PACKAGES = ("flowalign", "reward_models")
#: a demo of two tiny iterations: two prompts × two samples, a two-prompt, two-step evaluation after each
QUICK_DEMO = ["iterations=2", "sampling.prompts_per_iteration=2", "sampling.group_size=2",
              "sampling.rollout_batch_size=4", "optim.micro_batch_size=8", "eval.every=1", "eval.max_prompts=2",
              "eval.num_steps=2", "eval.batch_size=2", "checkpoint.every=1", "logging.progress_bar=false"]


def run(args: list[str], cwd: Path, site: Path | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PIP_NO_INDEX": "1"}
    env.pop("PYTHONPATH", None)
    if site is not None:
        env["PYTHONPATH"] = str(site)
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The folder a freshly built wheel was installed into."""
    tmp = tmp_path_factory.mktemp("packaging")
    source = tmp / "source"
    source.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in BUILD_INPUTS:
        origin = ROOT / name
        if origin.is_dir():
            shutil.copytree(origin, source / name, ignore=ignore)
        else:
            shutil.copy2(origin, source / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    run([*pip, "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(tmp / "dist"),
         str(source)], cwd=tmp)
    (wheel,) = (tmp / "dist").glob("flowalign-*.whl")
    run([*pip, "install", "-q", "--no-deps", "--no-index", "--target", str(tmp / "site"), str(wheel)], cwd=tmp)
    # what the wheel was built from (the shared checkout may change meanwhile), then nothing of it importable
    (tmp / "built_from.json").write_text(json.dumps(file_digests(source)))
    shutil.rmtree(source)
    (tmp / "work").mkdir()
    return tmp / "site"


def file_digests(folder: Path) -> dict[str, str]:
    """Relative path → sha256 of every file under ``folder``."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_the_wheel_ships_every_module_and_the_data_byte_for_byte(installed):
    source = json.loads((installed.parent / "built_from.json").read_text())
    site = file_digests(installed)
    modules = {path for path in source if path.endswith(".py") and path.split("/")[0] in PACKAGES}
    assert modules - set(site) == set(), "modules missing from the wheel (a folder without __init__.py?)"
    for relative in SHIPPED:
        expected = {path: digest for path, digest in source.items() if path.startswith(relative + "/")}
        found = {path.removeprefix("flowalign/_data/"): digest for path, digest in site.items()
                 if path.startswith(f"flowalign/_data/{relative}/")}
        assert expected and found == expected, f"{relative}: the wheel's copy differs from the checkout's"


@pytest.mark.slow
def test_the_installed_copy_is_the_one_imported_outside_the_checkout(installed):
    work = installed.parent / "work"
    out = run([sys.executable, "-c", "import importlib.util, flowalign, flowalign.resources as r; "
               "print(flowalign.__file__); print(importlib.util.find_spec('reward_models').origin); "
               "r.main(['assets/toy-sd3', 'configs/toy_grpo.yaml'])"], work, installed)
    data = installed / "flowalign" / "_data"
    assert out.stdout.splitlines() == [str(installed / "flowalign" / "__init__.py"),
                                       str(installed / "reward_models" / "__init__.py"),
                                       str(data / "assets" / "toy-sd3"), str(data / "configs" / "toy_grpo.yaml")]


@pytest.mark.slow
def test_the_installed_demo_runs_from_another_folder(installed):
    work = installed.parent / "work"
    out = run([sys.executable, "-m", "flowalign", "demo", *QUICK_DEMO], work, installed, timeout=600)
    run_dir = work / "runs" / "demo"
    assert "outputs in runs/demo" in out.stdout
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["iterations"] == 2 and summary["output_dir"] == "runs/demo"
    assert set(summary["eval_before"]) >= {"eval/reward", "eval/shapes_quality"}
    assert set(summary["eval_after"]) >= {"eval/reward", "eval/shapes_quality"}
    assert (run_dir / "report.html").stat().st_size > 0
    assert (run_dir / "lora" / "pytorch_lora_weights.safetensors").is_file()
    config = (run_dir / "config.yaml").read_text()
    assert f"path: {installed / 'flowalign' / '_data' / 'assets' / 'toy-sd3'}\n" in config


@pytest.mark.slow
def test_the_installed_sample_command_uses_the_shipped_model(installed):
    work = installed.parent / "work"
    model = "assets/toy-sd3"  # no such folder here: the shipped copy (flowalign.resources.resolve)
    out_dir = work / "samples"
    run([sys.executable, "-m", "flowalign", "sample", "--model", model, "--prompt", "two red circles",
         "--num-per-prompt", "2", "--steps", "2", "--out", str(out_dir)], work, installed)
    manifest = json.loads((out_dir / "samples.json").read_text())
    assert manifest["model"] == model and len(manifest["samples"]) == 2
    for name in ("00000.png", "00001.png", "grid.png"):
        assert (out_dir / name).stat().st_size > 0


@pytest.mark.slow
def test_the_installed_train_command_finds_the_shipped_recipe_model_and_prompt_file(installed):
    """configs/toy_grpo.yaml (with its base), its model.path assets/toy-sd3 and a prompt file named relative to a
    checkout, from a folder holding none of them."""
    work = installed.parent / "work"
    overrides = [o for o in QUICK_DEMO if not o.startswith("iterations=")]
    out = run([sys.executable, "-m", "flowalign", "train", "configs/toy_grpo.yaml", "iterations=1", *overrides,
               "output_dir=runs/shipped", "data.eval_prompts=assets/prompts/heldout.txt"], work, installed, timeout=600)
    assert "outputs in runs/shipped" in out.stdout
    assert (work / "runs" / "shipped" / "summary.json").is_file()
    config = yaml.safe_load((work / "runs" / "shipped" / "config.yaml").read_text())
    assert config["algorithm"]["name"] == "grpo" and config["lora"]["rank"] == 16  # the recipe, then its base
    assert config["model"]["path"] == "assets/toy-sd3"  # recorded as written, found as shipped


def constraint_pins() -> dict[str, str]:
    pins = {}
    for number, line in enumerate((ROOT / "constraints.txt").read_text().splitlines(), 1):
        if line.strip() and not line.startswith("#"):
            match = re.fullmatch(r"([A-Za-z0-9_.\-]+)==(\S+)", line.strip())
            assert match, f"constraints.txt:{number}: expected NAME==VERSION, got {line!r}"
            pins[canonicalize_name(match[1])] = match[2]
    return pins


@pytest.mark.slow
def test_constraints_pin_every_dependency_inside_the_declared_range(installed):
    """The wheel's own metadata (built from pyproject.toml) against constraints.txt, for the install and dev."""
    (info,) = installed.glob("flowalign-*.dist-info")
    pins = constraint_pins()
    checked = 0
    for text in PathDistribution(info).requires:
        requirement = Requirement(text)
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": "dev"}):
            continue  # optional extras (xformers, wandb) are not part of the known-good set
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement.name} is not pinned in constraints.txt"
        assert requirement.specifier.contains(pins[name], prereleases=True), \
            f"constraints.txt pins {name}=={pins[name]}, outside pyproject's {requirement}"
        checked += 1
    assert checked >= 15  # the install dependencies and the dev tools were all seen


def test_make_installs_with_the_constraints_and_reinstalls_when_they_change():
    makefile = (ROOT / "Makefile").read_text()
    installs = [line for line in makefile.splitlines() if "pip install" in line]
    assert installs and all("-c constraints.txt" in line for line in installs), installs
    stamp_rule = next(line for line in makefile.splitlines() if line.startswith("$(STAMP):"))
    assert "constraints.txt" in stamp_rule.split(":", 1)[1] and "setup.py" in stamp_rule
    pins = constraint_pins()
    for package in ("torch", "torchvision"):  # installed first, by explicit version, from the local index
        assert f"{package}=={pins[package]}" in makefile
    assert "flowalign" not in pins  # the project itself is installed editable, never pinned
