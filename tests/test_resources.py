"""The lookup rule for shipped data (flowalign.resources): checkout layout, installed layout, relative paths."""

from pathlib import Path

import pytest

from flowalign import resources
from flowalign.errors import FlowAlignError
from flowalign.resources import data_root, resolve, shipped

ROOT = Path(__file__).resolve().parents[1]


def installed_layout(tmp_path: Path) -> Path:
    """A fake installed ``flowalign`` package folder whose ``_data`` holds the toy model and one recipe."""
    package = tmp_path / "site" / "flowalign"
    (package / "_data" / "assets" / "toy-sd3").mkdir(parents=True)
    (package / "_data" / "configs").mkdir(parents=True)
    (package / "_data" / "configs" / "toy_grpo.yaml").write_text("iterations: 1\n")
    return package


def test_the_checkout_is_the_root_when_nothing_is_installed():
    assert not resources.installed_data_dir().exists()  # a checkout never holds flowalign/_data
    assert data_root() == ROOT
    assert shipped("assets/toy-sd3") == ROOT / "assets" / "toy-sd3"
    assert shipped("./configs/toy_grpo_guard.yaml") == ROOT / "configs" / "toy_grpo_guard.yaml"


def test_every_shipped_path_and_the_named_ones_exist():
    for relative in (*resources.SHIPPED, resources.TOY_MODEL, resources.DEMO_RECIPE):
        assert shipped(relative).exists(), relative
    assert (shipped(resources.TOY_MODEL) / "model_index.json").is_file()


def test_toy_prompt_files_are_found_through_the_rule():
    from flowalign.toy.prompts import PROMPTS_DIR

    assert PROMPTS_DIR == shipped("assets/prompts")


def test_relative_shipped_paths_resolve_from_another_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve("assets/toy-sd3") == str(ROOT / "assets" / "toy-sd3")
    assert resolve("./assets/toy-sd3/") == str(ROOT / "assets" / "toy-sd3")
    assert resolve("configs/models/../toy_grpo.yaml") == str(ROOT / "configs" / "toy_grpo.yaml")
    assert resolve(Path("assets/prompts/train.txt")) == str(ROOT / "assets" / "prompts" / "train.txt")


def test_a_path_that_exists_is_used_as_given(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "assets" / "toy-sd3").mkdir(parents=True)  # the user's own folder of that name wins
    assert resolve("assets/toy-sd3") == "assets/toy-sd3"
    mine = tmp_path / "elsewhere.yaml"
    mine.write_text("seed: 0\n")
    assert resolve(str(mine)) == str(mine)


@pytest.mark.parametrize("path", [
    "stabilityai/stable-diffusion-3.5-medium",  # a hub id
    "assets/toy-sd3-grid.png",  # in the checkout, but not shipped: same answer as from a wheel
    "configs/no_such_recipe.yaml",  # inside a shipped folder but missing: the caller's error names it
    "../assets/toy-sd3",
    "/no/such/assets/toy-sd3",
    "",
])
def test_anything_else_comes_back_unchanged(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve(path) == path


def test_an_installed_copy_comes_first(tmp_path, monkeypatch):
    package = installed_layout(tmp_path)
    (package.parent / "pyproject.toml").write_text('[project]\nname = "flowalign"\n')  # even beside a checkout
    monkeypatch.setattr(resources, "PACKAGE_DIR", package)
    monkeypatch.chdir(tmp_path)
    assert data_root() == package / "_data"
    assert resolve("assets/toy-sd3") == str(package / "_data" / "assets" / "toy-sd3")
    assert shipped("configs/toy_grpo.yaml").read_text() == "iterations: 1\n"


def test_missing_data_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(resources, "PACKAGE_DIR", tmp_path / "site" / "flowalign")  # no _data, no checkout
    assert data_root() == tmp_path / "site" / "flowalign" / "_data"
    with pytest.raises(FlowAlignError, match=r"shipped data 'assets/toy-sd3' is missing.*reinstall flowalign"):
        shipped("assets/toy-sd3")
    monkeypatch.chdir(tmp_path)
    assert resolve("assets/toy-sd3") == "assets/toy-sd3"


def test_asking_for_something_not_shipped_names_what_ships():
    with pytest.raises(FlowAlignError, match=r"'assets/toy-sd3-grid.png' is not shipped.*assets/toy-sd3, "
                                             r"assets/prompts, configs"):
        shipped("assets/toy-sd3-grid.png")


def test_the_command_line_prints_the_root_or_each_resolved_path(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert resources.main([]) == 0
    assert capsys.readouterr().out == f"{ROOT}\n"
    assert resources.main(["assets/toy-sd3", "org/model"]) == 0
    assert capsys.readouterr().out == f"{ROOT / 'assets' / 'toy-sd3'}\norg/model\n"
