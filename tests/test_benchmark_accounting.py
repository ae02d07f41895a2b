"""The benchmark's arithmetic and accounting: rows per timed call with warmup, throughput = work / median time,
MFU and TFLOP/s from FLOPs × rows, and per-row FLOPs against a hand count from the model config (attention
included). No timing thresholds: only the relations between the reported numbers."""

import statistics

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from flowalign.benchmark import measure as m
from flowalign.benchmark.models import build_bench_model
from flowalign.benchmark.suite import BenchConfig, run_benchmark
from flowalign.models import Geometry
from flowalign.sampling import DynamicsConfig
from flowalign.training.lora import LoRAConfig, add_lora


def sd3_forward_flops(config, image_tokens: int, text_tokens: int, text_dim: int) -> int:
    """Hand count of one SD3 MMDiT forward on one row: 2·m·n·k per linear/conv, 4·L²·d per attention head."""
    inner = config["num_attention_heads"] * config["attention_head_dim"]
    n, t, p, layers = image_tokens, text_tokens, config["patch_size"], config["num_layers"]

    def linear(rows, fan_in, fan_out):
        return 2 * rows * fan_in * fan_out

    flops = linear(n, config["in_channels"] * p * p, inner)  # patch-embedding conv (stride = kernel)
    flops += linear(1, 256, inner) + linear(1, inner, inner)  # timestep MLP (256 sinusoidal channels)
    flops += linear(1, config["pooled_projection_dim"], inner) + linear(1, inner, inner)  # pooled-text MLP
    flops += linear(t, text_dim, config["caption_projection_dim"])  # context embedder
    for i in range(layers):
        last = i == layers - 1  # context_pre_only: no context output projection / feed-forward
        flops += linear(1, inner, 6 * inner) + linear(1, inner, (2 if last else 6) * inner)  # adaLN modulations
        flops += 4 * linear(n, inner, inner) + 3 * linear(t, inner, inner)  # image q, k, v, out; context q, k, v
        flops += 0 if last else linear(t, inner, inner)  # context out
        flops += 2 * linear(n, inner, 4 * inner) + (0 if last else 2 * linear(t, inner, 4 * inner))  # FFs
        flops += 4 * (n + t) ** 2 * inner  # joint attention: QKᵀ and PV over all heads
    flops += linear(1, inner, 2 * inner) + linear(n, inner, p * p * config["out_channels"])  # final norm, proj
    return flops


def fresh_tiny_sd3():
    bench = build_bench_model("tiny-sd3")
    return bench.model, bench.geometry


@pytest.fixture(scope="module")
def tiny_sd3():
    return fresh_tiny_sd3()


def test_rollout_and_training_rows_are_per_timed_call_with_warmup():
    model, geometry = fresh_tiny_sd3()  # gets a LoRA: not the shared one
    params = add_lora(model.transformer, LoRAConfig(rank=2, alpha=4))
    cond = model.encode_prompts(["a red circle", "a blue square"], with_negative=True)
    spec = m.RolloutSpec(3, 2, 4.5, DynamicsConfig("flow_sde", 0.7))
    roll = m.measure_rollout(model, cond, geometry, spec, iterations=2, warmup=1)
    assert roll["images"] == 4 and roll["rows"] == 4 * 3 * 2  # samples × steps × CFG, per rollout
    assert roll["rows"] == m.rollout_rows(model, cond, geometry, spec)
    assert len(roll["times"]) == 2 and roll["seconds"] == statistics.median(roll["times"])
    assert roll["images_per_s"] * roll["seconds"] == pytest.approx(roll["images"], rel=1e-9)

    traj = roll["trajectory"]
    rows_cond = model.encode_prompts(traj.prompts, with_negative=True)
    train = m.measure_training(model, params, traj, rows_cond, micro_batch_size=3, max_micro_batches=2,
                               iterations=2, warmup=1)
    assert train["pairs"] == 6 and train["rows"] == 6 * 2  # one row per pair and CFG branch, per pass
    assert len(train["times"]) == 2 and train["seconds"] == statistics.median(train["times"])
    assert train["pairs_per_s"] * train["seconds"] == pytest.approx(train["pairs"], rel=1e-9)
    assert all(p.grad is None for p in params)


def test_timed_runs_warmup_then_iterations_and_iteration_medians_skip_warmup():
    calls = []
    times, last = m.timed(lambda: calls.append(len(calls)) or len(calls), torch.device("cpu"), iterations=3, warmup=2)
    assert len(calls) == 5 and len(times) == 3 and last == 5
    with pytest.raises(ValueError, match="iterations >= 1"):
        m.timed(lambda: None, torch.device("cpu"), iterations=0, warmup=0)

    class FakeTrainer:
        device = "cpu"

        def __init__(self):
            self.seen = []

        def train_iteration(self, index):
            self.seen.append(index)
            return {"skipped": 1 if index == 0 else 0, "speed/rollout_images_per_s": 100.0 * (index + 1),
                    "train/pairs": 10.0 * (index + 1)}

    trainer = FakeTrainer()
    out = m.measure_iteration(trainer, iterations=3, warmup=1)
    assert trainer.seen == [0, 1, 2, 3] and len(out["times"]) == 3
    assert out["skipped"] == 0  # the warmup iteration's skip is not counted
    assert out["speed/rollout_images_per_s"] == 300.0 and out["train/pairs"] == 30.0  # medians of 2, 3, 4
    assert "speed/train_pairs_per_s" not in out and out["seconds"] == statistics.median(out["times"])


def test_mfu_and_achieved_tflops_arithmetic():
    assert m.mfu(10**12, 6, 2.0, 1.5) == pytest.approx(2.0)  # 6e12 FLOP in 2 s = 3 TFLOP/s of 1.5
    assert m.mfu(3 * 10**9, 1000, 0.5, 989.0) == pytest.approx(6.0 / 989.0)
    assert m.mfu(10**12, 6, 2.0, None) is None and m.mfu(10**12, 6, 2.0, 0.0) is None
    assert m.mfu(10**12, 6, 0.0, 1.0) is None
    assert m.achieved_tflops(10**12, 6, 2.0) == pytest.approx(3.0)
    assert m.achieved_tflops(2 * 10**9, 500, 4.0) == pytest.approx(0.25)


def test_run_benchmark_numbers_are_consistent():
    cfg = BenchConfig(model="tiny-sd3", steps=2, group_size=2, prompts=1, micro_batch_size=2, train_micro_batches=1,
                      lora_rank=2, iterations=1, warmup=1, peak_tflops=2.0, skip_iteration=True)
    r = run_benchmark(cfg, log=lambda _: None)["results"]
    roll, train, flops = r["rollout"], r["train"], r["flops"]
    assert roll["images"] == 2 and roll["rows"] == 2 * 2 * 2  # warmup=1: still rows of ONE rollout
    assert train["pairs"] == 2 and train["rows"] == 2 * 2
    assert roll["images_per_s"] * roll["seconds"] == pytest.approx(roll["images"], rel=1e-9)
    assert train["pairs_per_s"] * train["seconds"] == pytest.approx(train["pairs"], rel=1e-9)
    fwd, fwd_bwd = flops["forward_per_row"], flops["forward_backward_per_row"]
    assert 2 * fwd < fwd_bwd < 4 * fwd  # backward ≈ 2× forward (the LoRA adapters' weights get gradients)
    assert flops["rollout_tflops_per_s"] == pytest.approx(fwd * roll["rows"] / roll["seconds"] / 1e12, rel=1e-9)
    assert flops["train_tflops_per_s"] == pytest.approx(fwd_bwd * train["rows"] / train["seconds"] / 1e12,
                                                        rel=1e-9)
    assert flops["peak_tflops"] == 2.0
    assert flops["rollout_mfu"] == pytest.approx(flops["rollout_tflops_per_s"] / 2.0, rel=1e-9)
    assert flops["train_mfu"] == pytest.approx(flops["train_tflops_per_s"] / 2.0, rel=1e-9)
    assert "iteration" not in r


@pytest.mark.parametrize("height,width", [(32, 32), (64, 64), (32, 64)])
def test_forward_flops_per_row_match_a_hand_count(tiny_sd3, height, width):
    model, _ = tiny_sd3
    geometry = Geometry(height, width)
    cond = model.encode_prompts(["a red circle"], with_negative=True)
    embeds = cond.tensors["prompt_embeds"]
    config = model.transformer.config
    _, h, w = model.latent_shape(geometry)
    image_tokens = (h // config.patch_size) * (w // config.patch_size)
    expected = sd3_forward_flops(config, image_tokens, embeds.shape[1], embeds.shape[2])
    assert m.transformer_flops_per_row(model, cond, geometry, 4.5) == expected


def test_attention_flops_are_counted_on_cpu(tiny_sd3):
    """The stock counter misses CPU flash attention; the extra formulas add exactly 4·L²·d per head and layer."""
    model, geometry = tiny_sd3
    cond = model.encode_prompts(["a red circle"], with_negative=True)
    x = model.initial_noise(geometry, batch_size=1)
    with torch.no_grad(), FlopCounterMode(display=False) as stock:
        model._forward(x, torch.full((1,), 500.0), {k: v[:1] for k, v in cond.tensors.items()}, geometry, 4.5)
    config = model.transformer.config
    _, h, w = model.latent_shape(geometry)
    tokens = (h // config.patch_size) * (w // config.patch_size) + cond.tensors["prompt_embeds"].shape[1]
    attention = 4 * tokens**2 * config.attention_head_dim * config.num_attention_heads * config.num_layers
    counted = m.transformer_flops_per_row(model, cond, geometry, 4.5)
    assert counted - stock.get_total_flops() == attention > 0


def test_cpu_sdpa_formulas_count_flash_attention_forward_and_backward():
    b, heads, lq, lk, d = 2, 3, 5, 7, 8
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(b, heads, n, d, generator=gen, requires_grad=True) for n in (lq, lk, lk))
    with FlopCounterMode(display=False, custom_mapping=m.EXTRA_FLOP_FORMULAS) as counter:
        out = F.scaled_dot_product_attention(q, k, v)
    assert counter.get_total_flops() == 4 * b * heads * lq * lk * d  # QKᵀ and PV
    with FlopCounterMode(display=False, custom_mapping=m.EXTRA_FLOP_FORMULAS) as counter:
        out.sum().backward()
    assert counter.get_total_flops() == 10 * b * heads * lq * lk * d  # recompute QKᵀ, dP, dV, dQ, dK


def test_flops_per_row_ignore_gradient_checkpointing_and_leave_no_grads():
    bench = build_bench_model("tiny-sd3")
    model, geometry = bench.model, bench.geometry
    params = add_lora(model.transformer, LoRAConfig(rank=2, alpha=4))
    cond = model.encode_prompts(["a red circle"], with_negative=True)
    plain = m.transformer_flops_per_row(model, cond, geometry, 4.5, backward=True)
    model.transformer.enable_gradient_checkpointing()
    assert m.transformer_flops_per_row(model, cond, geometry, 4.5, backward=True) == plain  # no recompute
    assert model.transformer.is_gradient_checkpointing  # switched back on
    assert all(p.grad is None for p in model.transformer.parameters()) and len(params) > 0
