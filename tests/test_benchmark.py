"""The benchmark's builders and measure functions (no timing assertions: numbers only need to be sane)."""

import json
import math
from pathlib import Path

import pytest
import torch

from flowalign.benchmark import measure as m
from flowalign.benchmark.arch import build_arch_pipeline, load_arch_spec
from flowalign.benchmark.models import build_bench_model
from flowalign.benchmark.suite import BenchConfig, run_benchmark
from flowalign.benchmark.table import format_table
from flowalign.errors import ConfigError
from flowalign.models.loading import adapter_class
from flowalign.sampling import DynamicsConfig, SDEWindow
from flowalign.training.lora import LoRAConfig, add_lora

ROOT = Path(__file__).resolve().parents[1]
ARCHS = sorted((ROOT / "configs" / "models").glob("*.json"))


def test_every_family_has_an_architecture_file():
    pipelines = {json.loads(p.read_text())["pipeline"] for p in ARCHS}
    assert pipelines == {"StableDiffusion3Pipeline", "FluxPipeline", "WanPipeline", "QwenImagePipeline",
                         "WanImageToVideoPipeline", "Flux2KleinPipeline"}


@pytest.mark.parametrize("path", ARCHS, ids=lambda p: p.stem)
def test_arch_builds_scaled_down_and_samples(path):
    spec = load_arch_spec(path, scale_down=True)
    assert spec.source.count("/") == 1  # a hub repo id
    bench = build_bench_model(arch=str(path), scale_down=True)
    model = bench.model
    assert type(model.pipeline).__name__ == spec.pipeline
    cond = model.encode_prompts(["a red circle"], with_negative=model.uses_cfg(bench.guidance_scale))
    x = model.initial_noise(bench.geometry, batch_size=1)
    with torch.no_grad():
        v = model.velocity(x, 0.5, cond, bench.geometry, bench.guidance_scale)
        pixels = model.decode(x, bench.geometry)
    assert v.shape == x.shape and torch.isfinite(v).all()
    assert pixels.shape[-2:] == (bench.geometry.height, bench.geometry.width)


def test_arch_full_size_parameter_counts_on_meta():
    """The published configs give the published sizes (built on the meta device: no memory)."""
    # qwen-image: the "20B MMDiT" of the Qwen/Qwen-Image model card (20.43B counted from its transformer config);
    # wan2.1-i2v-14b-480p: the "14B" of the name is the T2V-14B backbone; the I2V transformer adds image
    # cross-attention k/v (40 blocks x 2 x 5120^2) for the 16.4B its checkpoint holds; flux2-klein-base-4b: the
    # "4B" of FLUX.2 [klein] 4B (3.88B counted: 5 double + 20 single blocks of width 3072)
    expected = {"sd3.5-medium": 2.24e9, "flux-dev": 11.90e9, "wan2.1-t2v-1.3b": 1.42e9, "qwen-image": 20.4e9,
                "wan2.1-i2v-14b-480p": 16.39e9, "flux2-klein-base-4b": 3.88e9}
    for path in ARCHS:
        spec = load_arch_spec(path)
        pipeline = build_arch_pipeline(spec, device="meta", dtype=torch.bfloat16)
        params = sum(p.numel() for p in pipeline.transformer.parameters())
        assert params == pytest.approx(expected[spec.name], rel=0.01), spec.name


def test_arch_errors_name_the_input(tmp_path):
    with pytest.raises(ConfigError, match="nope.json"):
        load_arch_spec(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**json.loads(ARCHS[0].read_text()), "pipeline": "UNetPipeline"}))
    with pytest.raises(ConfigError, match="UNetPipeline"):
        load_arch_spec(bad)
    with pytest.raises(ConfigError, match="'unet'"):
        load_arch_spec(ARCHS[0], overrides={"unet": {"num_layers": 1}})
    with pytest.raises(ConfigError, match="'tiny-nope'"):
        build_bench_model("tiny-nope")
    with pytest.raises(ConfigError, match="fp8"):
        BenchConfig(dtype="fp8").check()


def test_measure_functions_on_tiny_sd3():
    bench = build_bench_model("tiny-sd3")
    model, geometry = bench.model, bench.geometry
    params = add_lora(model.transformer, LoRAConfig(rank=4, alpha=8))
    cond = model.encode_prompts(["a red circle", "a blue square"], with_negative=True)
    spec = m.RolloutSpec(4, 2, 4.5, DynamicsConfig("flow_sde", 0.7))
    roll = m.measure_rollout(model, cond, geometry, spec, iterations=1, warmup=0)
    assert roll["images"] == 4 and roll["rows"] == 4 * 4 * 2  # samples × steps × CFG
    traj = roll["trajectory"]
    rows_cond = model.encode_prompts(traj.prompts, with_negative=True)
    train = m.measure_training(model, params, traj, rows_cond, micro_batch_size=3, max_micro_batches=2,
                               iterations=1, warmup=0)
    assert train["pairs"] == 6 and all(p.grad is None for p in params)
    fwd = m.transformer_flops_per_row(model, cond, geometry, 4.5)
    fwd_bwd = m.transformer_flops_per_row(model, cond, geometry, 4.5, backward=True)
    assert 0 < fwd < fwd_bwd
    for value in (roll["images_per_s"], train["pairs_per_s"], m.mfu(fwd, roll["rows"], roll["seconds"], 1.0),
                  m.peak_memory_gib(torch.device("cpu"))):
        assert math.isfinite(value) and value > 0
    prefix = m.shared_prefix_rows(model, cond, geometry, spec, SDEWindow(2, 1))
    assert prefix["rows_without"] == 32 and prefix["rows_shared"] == 2 * 2 * 2 + 2 * 4 * 2  # 2 shared steps


def test_run_benchmark_end_to_end_tiny_sd3():
    cfg = BenchConfig(model="tiny-sd3", steps=3, group_size=2, prompts=1, micro_batch_size=2, train_micro_batches=1,
                      lora_rank=4, iterations=1, warmup=0, peak_tflops=1.0)
    result = run_benchmark(cfg, log=lambda _: None)
    r = result["results"]
    numbers = [r["rollout"]["images_per_s"], r["train"]["pairs_per_s"], r["iteration"]["seconds"],
               r["flops"]["rollout_mfu"], r["flops"]["train_mfu"], r["memory_iteration_gib"]]
    assert all(math.isfinite(x) and x > 0 for x in numbers)
    json.dumps(result, default=str)
    table = format_table(result)
    assert "images/s" in table and "pairs/s" in table and "s/iteration" in table


def test_adapter_for_every_arch_pipeline():
    for path in ARCHS:
        family = adapter_class(json.loads(path.read_text())["pipeline"]).family
        assert family in {"sd3", "flux", "wan", "qwen_image", "wan_i2v", "flux2_klein"}
