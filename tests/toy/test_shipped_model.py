import json
from pathlib import Path

import pytest
import torch

from flowalign.toy.evaluate import EvalConfig, evaluate
from flowalign.toy.prompts import heldout_prompts

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "assets" / "toy-sd3"
METRICS = ROOT / "assets" / "toy-sd3-metrics.json"


def test_from_pretrained_offline():
    from diffusers import StableDiffusion3Pipeline
    pipe = StableDiffusion3Pipeline.from_pretrained(str(MODEL))
    assert pipe.transformer.dtype == torch.float32 and pipe.text_encoder.dtype == torch.float32
    total = sum(f.stat().st_size for f in MODEL.rglob("*") if f.is_file())
    assert total <= 30 * 2**20


def test_heldout_accuracy_matches_card():
    torch.set_num_threads(2)
    card = json.loads(METRICS.read_text())
    subset = list(heldout_prompts())[::2]  # 30 fixed prompts, one seed each
    cfg = EvalConfig(steps=card["steps"], guidance=card["guidance"], samples_per_prompt=1)
    result = evaluate(str(MODEL), cfg, subset)
    assert 0.25 <= result["accuracy"] <= 0.75
    assert result["accuracy"] == pytest.approx(card["accuracy"], abs=0.12)
