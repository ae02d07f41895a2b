"""A concept's phrasings (aliases, singular/plural forms) in training targets, surrogates, transport and SPM files."""

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from flowalign.erasure import FacilitatedTransport, SPMNetwork, load_spm, merge, read_spm, save_spm
from flowalign.erasure import phrasing
from flowalign.erasure.train import EraseConfig
from flowalign.errors import ConfigError
from flowalign.models import load_model
from flowalign.models.tiny import tiny_sd3_pipeline
from flowalign.toy.prompts import parse_prompt, split_prompts

TOY = Path(__file__).resolve().parents[2] / "assets" / "toy-sd3"


@pytest.mark.parametrize("word,forms", [
    ("triangle", ["triangles"]), ("triangles", ["triangle"]), ("dog", ["dogs"]), ("box", ["boxes"]),
    ("boxes", ["box"]), ("puppy", ["puppies"]), ("puppies", ["puppy"]), ("glass", ["glasses"]),
    ("horses", ["horse"]), ("a red fox", ["a red foxes"]), ("3d", []),
])
def test_inflection_rule(word, forms):
    assert phrasing.inflections(word) == forms


def test_phrasings_order_and_deduplication():
    assert phrasing.phrasings("triangle", ["triangles", "Triangle"]) == ["triangle", "triangles"]
    assert phrasing.phrasings("dog", ["puppy"]) == ["dog", "puppy", "dogs", "puppies"]
    assert phrasing.phrasings("dog", ["puppy"], inflect=False) == ["dog", "puppy"]
    with pytest.raises(ConfigError, match="empty alias"):
        phrasing.phrasings("dog", [" "])


def test_matching_is_whole_word_and_case_insensitive():
    phrases = phrasing.phrasings("triangle")
    assert phrasing.names("Two TRIANGLES", phrases) and phrasing.names("a triangle.", phrases)
    assert not phrasing.names("a triangular tile", phrases)
    assert phrasing.remove("two red triangles and a green triangle", phrases) == "two red and a green"


def test_every_inflected_toy_target_is_used_and_no_surrogate_names_the_concept():
    """Issue 21: "triangle" silently dropped the prompts naming only "triangles" and kept "triangle" in the
    surrogates of prompts naming both."""
    train = list(split_prompts("train"))
    config = EraseConfig(["triangle"], target_prompts=train)
    pairs = config.targets(0)
    with_triangles = [p for p in train if parse_prompt(p).names("triangle")]
    plural_only = [p for p in with_triangles if "triangles" in p.split() and "triangle" not in p.split()]
    assert len(plural_only) > 50  # the test reaches the case the old exact-word rule dropped
    assert [t for t, _ in pairs] == with_triangles
    assert all("triangle" not in s for _, s in pairs)
    assert dict(pairs)["two red triangles and a green triangle"] == "two red and a green"
    # without inflections only the exact word is a target (the old behaviour, still selectable)
    exact = EraseConfig(["triangle"], target_prompts=train, inflect=False).targets(0)
    assert {t for t, _ in exact} == {p for p in with_triangles if "triangle" in p.split()}


def test_aliases_are_targets_and_never_left_in_surrogates():
    prompts = ["a puppy on grass", "two dogs and a cat", "a red fox", "a cat", "a hound and a dog"]
    config = EraseConfig(["dog", "fox"], aliases={"dog": ["puppy", "hound"]}, target_prompts=prompts,
                         surrogate="animal")
    dog = config.targets(0)
    assert [t for t, _ in dog] == ["a puppy on grass", "two dogs and a cat", "a hound and a dog"]
    assert [s for _, s in dog] == ["a animal on grass", "two animal and a cat", "a animal and a animal"]
    assert config.targets(1) == [("a red fox", "a red animal")]
    # no target prompt: every phrasing is a target of its own
    assert EraseConfig(["dog"], aliases={"dog": ["puppy"]}).targets(0) == [
        ("dog", ""), ("puppy", ""), ("dogs", ""), ("puppies", "")]
    # nested occurrences: the surrogate is cleaned until no phrasing is left
    assert EraseConfig(["red fox"], target_prompts=["a red red fox fox"]).targets(0) == [("a red red fox fox", "a")]


def test_alias_and_surrogate_errors():
    with pytest.raises(ConfigError, match="not among the concepts"):
        EraseConfig(["dog"], aliases={"cat": ["kitten"]})
    with pytest.raises(ConfigError, match="names the concept"):
        EraseConfig(["dog"], surrogate="small dogs")


def test_anchor_prompts_naming_the_concept_are_not_anchors():
    config = EraseConfig(["triangle", "red"], anchor_prompts=["two blue triangles", "a red square", "a blue circle"])
    assert config.anchors(0) == ["a red square", "a blue circle"]
    assert config.anchors(1) == ["two blue triangles", "a blue circle"]


def test_transport_takes_the_maximum_over_phrasings():
    """ "circles" shares no CLIP BPE token with "circle": the overlap needs the plural among the phrasings."""
    model = load_model(tiny_sd3_pipeline())
    prompts = ["two red circles", "a red circle", "a blue square"]
    single = FacilitatedTransport(model, ["circle"], use_cosine=False)
    assert single.overlap(prompts)[:, 0].tolist() == [0.0, 1.0, 0.0]
    both = FacilitatedTransport(model, [phrasing.phrasings("circle"), "square"], use_cosine=False)
    assert both.concepts == ["circle", "square"]
    assert both.overlap(prompts).tolist() == [[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]
    # the cosine is the concept's own (not a maximum over phrasings, which only raised γ of unrelated prompts)
    torch.testing.assert_close(FacilitatedTransport(model, [["circle", "circles"]]).cosine(prompts),
                               FacilitatedTransport(model, ["circle"]).cosine(prompts), rtol=0, atol=1e-6)
    with pytest.raises(ConfigError, match="at least one phrasing"):
        FacilitatedTransport(model, [[]])


def _network(transformer, concepts, phrasings=None):
    net = SPMNetwork.for_transformer(transformer, concepts, phrasings=phrasings)
    with torch.no_grad():
        for m in net.membranes.values():
            m.up.normal_(0, 0.1, generator=torch.Generator().manual_seed(1))
    return net


def test_phrasings_are_saved_loaded_and_merged(tmp_path):
    transformer = tiny_sd3_pipeline().transformer
    net = _network(transformer, ["triangle"], [["triangle", "triangles"]])
    save_spm(net, transformer, tmp_path / "t.safetensors")
    assert read_spm(tmp_path / "t.safetensors")[1]["phrasings"] == [["triangle", "triangles"]]
    loaded = load_spm(transformer, tmp_path / "t.safetensors")
    assert loaded.phrasings == [["triangle", "triangles"]]
    loaded.detach()
    other = _network(transformer, ["red"])
    assert merge([loaded, other]).phrasings == [["triangle", "triangles"], ["red"]]
    with pytest.raises(ConfigError, match="phrasings"):
        SPMNetwork({"a": (2, 2)}, ["x", "y"], phrasings=[["x"]])


def test_an_old_file_without_phrasings_loads_with_its_concept_as_only_phrasing(tmp_path):
    transformer = tiny_sd3_pipeline().transformer
    net = _network(transformer, ["triangle"], [["triangle", "triangles"]])
    path = save_spm(net, transformer, tmp_path / "new.safetensors")
    with safe_open(str(path), framework="pt") as f:
        metadata, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    del metadata["phrasings"]
    save_file(tensors, str(tmp_path / "old.safetensors"), metadata=metadata)
    old = load_spm(transformer, tmp_path / "old.safetensors")
    assert old.concepts == ["triangle"] and old.phrasings == [["triangle"]]
    for name in net.layer_names:  # the same weights (copied from the same file bytes: exact)
        assert torch.equal(old.membrane(name).up, net.membrane(name).up)
    old.detach()
    metadata["phrasings"] = json.dumps([["triangle"], ["extra"]])
    save_file(tensors, str(tmp_path / "bad.safetensors"), metadata=metadata)
    with pytest.raises(ConfigError, match="bad.safetensors.*phrasings"):
        read_spm(tmp_path / "bad.safetensors")


def test_toy_model_transport_reaches_plural_prompts_through_the_phrasings():
    """On the shipped toy model (real CLIP BPE): every held-out prompt naming a triangle, singular or plural, gets
    γ = 1 from the phrasings; the concept alone left plural-only prompts far below (issue 21: mean 0.34)."""
    model = load_model(TOY, collapse_zero_padding=True)
    held = [p for p in split_prompts("heldout") if parse_prompt(p).names("triangle")]
    plural_only = [p for p in held if "triangle" not in p.split()]
    assert len(plural_only) >= 5
    gamma = FacilitatedTransport(model, [phrasing.phrasings("triangle")])(held)[:, 0]
    assert gamma.min() == 1.0
    alone = FacilitatedTransport(model, ["triangle"])(plural_only)[:, 0]
    assert alone.mean() < 0.6
