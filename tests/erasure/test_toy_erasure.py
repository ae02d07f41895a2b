"""Erasing "red" from the shipped toy model: the red clause vanishes, other prompts are untouched (~30 s)."""

import random
from pathlib import Path

from flowalign.erasure import FacilitatedTransport
from flowalign.erasure.evaluate import erasure_report
from flowalign.erasure.train import EraseConfig, train_spm
from flowalign.models import load_model
from flowalign.toy.prompts import parse_prompt, split_prompts
from reward_models import build_reward

TOY = Path(__file__).resolve().parents[2] / "assets" / "toy-sd3"


def names_red(prompt: str) -> bool:
    return parse_prompt(prompt).names("red")


def test_erasing_red_on_the_toy_model():
    train, held = list(split_prompts("train")), list(split_prompts("heldout"))
    rng = random.Random(0)
    red = rng.sample([p for p in held if names_red(p)], 8)
    other = rng.sample([p for p in held if not names_red(p)], 8)
    model = load_model(TOY, collapse_zero_padding=True)
    config = EraseConfig(["red"], target_prompts=[p for p in train if names_red(p)],
                         anchor_prompts=[p for p in train if not names_red(p)], random_anchors=1, steps=200, lr=1e-2,
                         guidance_scale=1.0)  # the toy model's inference guidance (its card), used below too
    spm = train_spm(model, config, progress=False)
    spm.attach(model.transformer)
    report = erasure_report(model, spm, FacilitatedTransport(model, spm.concepts), red, other,
                            reward=build_reward("shapes"), steps=12)
    target, preserve = report["target"], report["preserve"]
    assert target["concept[red]_original"] >= 0.5  # the model draws red when asked...
    assert target["concept[red]_spm"] <= 0.125  # ...and no longer does with the SPM
    assert target["mean_gamma"] > 0.9 and preserve["mean_gamma"] < 0.1
    assert preserve["pixel_mad"] < 0.005  # prompts without red: the same images
    assert abs(preserve["reward_spm"] - preserve["reward_original"]) <= 0.1
