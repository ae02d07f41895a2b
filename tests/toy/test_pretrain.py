import math
from dataclasses import replace

import pytest
import torch

from flowalign.errors import ConfigError
from flowalign.models import sd3_attention as collapsed_attention
from flowalign.toy.architecture import ToyArchitecture
from flowalign.utils.safe_state import load_state, save_state
from flowalign.toy.pretrain import CHECKPOINT, N_T5_PAD, PretrainConfig, Pretrainer, _rng, _scenes, foreground_weights

ARCH = ToyArchitecture(vae_channels=(8, 16), num_layers=1, num_heads=2, head_dim=16)
CFG = PretrainConfig(seed=3, vae_steps=2, flow_steps=3, vae_batch=4, flow_batch=4, log_every=1,
                     checkpoint_every=100, warmup=2, arch=ARCH, threads=2)


def losses(cfg, run_dir, stop_after=None):
    return [r["loss"] for r in Pretrainer(cfg, run_dir, log=lambda s: None).run(stop_after)]


def flow_loss_after_vae_phase(cfg, run_dir, step=0):
    """Recompute flow loss ``step`` from the checkpoint ``run`` writes when the VAE phase ends (flow_step 0),
    with the collapsed attention ``run`` trains with."""
    t = Pretrainer(cfg, run_dir, log=lambda s: None)
    assert (t.vae_step, t.flow_step) == (cfg.vae_steps, 0)
    collapsed_attention.install(t.pipe.transformer, N_T5_PAD)
    with torch.no_grad():
        return t, t.flow_loss(step)


def test_same_seed_same_first_losses(tmp_path):
    a = losses(CFG, tmp_path / "a")
    b = losses(CFG, tmp_path / "b")
    c = losses(replace(CFG, seed=4), tmp_path / "c")
    assert len(a) == 5 and all(math.isfinite(v) for v in a)
    assert a == b and a != c  # exact by construction: the same seed, threads and arithmetic in one process
    # the logged losses are the losses of the model the steps start from: recomputed independently of run(), by a
    # fresh instance or from the checkpoint run() wrote (weights copied into the same modules: observed exact);
    # rel 1e-6 allows for float32 rounding only, each optimiser step moves these losses by >= 5%
    with torch.no_grad():
        assert a[0] == pytest.approx(float(Pretrainer(CFG, tmp_path / "fresh", log=lambda s: None).vae_loss(0)),
                                     rel=1e-6)
    assert a[2] == pytest.approx(float(flow_loss_after_vae_phase(CFG, tmp_path / "a")[1]), rel=1e-6)
    # and the optimiser steps lower them (fixed seed: deterministic)
    assert a[1] < a[0] and a[2] > a[3] > a[4]


def test_resume_continues_the_same_run(tmp_path):
    full = losses(CFG, tmp_path / "full")
    t = Pretrainer(CFG, tmp_path / "part", log=lambda s: None)
    t.run(stop_after=3)
    t.save_checkpoint()
    resumed = Pretrainer(CFG, tmp_path / "part", log=lambda s: None)
    assert resumed.flow_step == 1
    # resume in the same process: observed exact; rel 1e-6 is float32 rounding, far below a step's change (>= 5%)
    assert [r["loss"] for r in resumed.run()] == pytest.approx(full, rel=1e-6)


def test_export_loads_offline(tmp_path):
    from diffusers import StableDiffusion3Pipeline
    t = Pretrainer(replace(CFG, flow_steps=1), tmp_path / "run", log=lambda s: None)
    t.run()
    out = t.export(tmp_path / "pipe")
    pipe = StableDiffusion3Pipeline.from_pretrained(out)
    img = pipe("two red circles", num_inference_steps=2, height=32, width=32, guidance_scale=1.0,
               output_type="pt").images
    assert img.shape == (1, 3, 32, 32) and torch.isfinite(img).all()


def test_bad_config_names_key():
    with pytest.raises(ConfigError, match="flow_batch"):
        PretrainConfig(flow_batch=0)


def test_resume_refuses_another_scene_config(tmp_path):
    from flowalign.toy.scenes import SceneConfig
    t = Pretrainer(CFG, tmp_path / "run", log=lambda s: None)
    t.run(stop_after=1)
    t.save_checkpoint()
    with pytest.raises(ConfigError, match="scene config"):
        Pretrainer(replace(CFG, scenes=SceneConfig(min_size=9)), tmp_path / "run", log=lambda s: None)
    with pytest.raises(ConfigError, match="image_size"):
        PretrainConfig(scenes=SceneConfig(image_size=48))


def test_foreground_weights_cover_the_shape_and_its_rim():
    from flowalign.toy.pretrain import foreground_weights
    from flowalign.toy.scenes import Placed, render
    x = render([Placed("red", "square", 16.0, 16.0, 8.0)])[None] * 2 - 1  # pixels 12..19 on
    w = foreground_weights(x, factor=2, weight=4.0)[0, 0]
    assert w.shape == (16, 16)
    heavy = torch.zeros(16, 16, dtype=torch.bool)
    heavy[5:11, 5:11] = True  # latent pixels 6..9 hold the square, one more on each side touches it
    assert torch.equal(w == 5.0, heavy) and torch.equal(w == 1.0, ~heavy)


def test_foreground_weight_changes_only_the_flow_loss(tmp_path, monkeypatch):
    plain = losses(CFG, tmp_path / "plain")
    cfg = replace(CFG, foreground_weight=4.0)
    weighted = losses(cfg, tmp_path / "weighted")
    assert weighted[:2] == plain[:2]  # the VAE phase is untouched (exact: it never reads foreground_weight)
    assert weighted[2:] != plain[2:] and all(math.isfinite(v) for v in weighted)
    # the first weighted flow loss is the weight-normalised mean of the plain loss's squared errors
    t, recomputed = flow_loss_after_vae_phase(cfg, tmp_path / "weighted")
    assert weighted[2] == pytest.approx(float(recomputed), rel=1e-6)
    seen = []
    mse = torch.nn.functional.mse_loss
    monkeypatch.setattr(torch.nn.functional, "mse_loss", lambda v, target: seen.append((v, target)) or mse(v, target))
    t.cfg = CFG  # same weights (identical VAE phase, same init), no foreground weight
    with torch.no_grad():
        assert float(t.flow_loss(0)) == pytest.approx(plain[2], rel=1e-6)
    (v, target), = seen
    x, _ = _scenes(CFG, _rng(CFG.seed, 2, 0)[0], CFG.flow_batch)
    w = foreground_weights(x, ARCH.vae_factor, 4.0)
    assert w.shape == (CFG.flow_batch, 1, *v.shape[-2:]) and (w > 1).any() and (w == 1).any()
    squared = (v - target).pow(2).mean(dim=1, keepdim=True)  # per latent pixel, over channels
    assert weighted[2] == pytest.approx(float((squared * w).sum() / w.sum()), rel=1e-5)
    with pytest.raises(ConfigError, match="foreground_weight"):
        PretrainConfig(foreground_weight=-1.0)


def test_checkpoint_from_before_new_fields_resumes(tmp_path):
    t = Pretrainer(CFG, tmp_path / "run", log=lambda s: None)
    t.run(stop_after=1)
    t.save_checkpoint()
    state = load_state(t.run_dir, CHECKPOINT)
    del state["config"]["scenes"], state["config"]["arch"]["patch_size"]  # as written before they existed
    save_state(state, t.run_dir, CHECKPOINT)
    assert Pretrainer(CFG, tmp_path / "run", log=lambda s: None).vae_step == 1


def test_patch_size_one_exports_a_loadable_pipeline(tmp_path):
    from diffusers import StableDiffusion3Pipeline
    cfg = replace(CFG, vae_steps=1, flow_steps=1, arch=replace(ARCH, patch_size=1))
    t = Pretrainer(cfg, tmp_path / "run", log=lambda s: None)
    t.run()
    pipe = StableDiffusion3Pipeline.from_pretrained(t.export(tmp_path / "pipe"))
    assert pipe.transformer.config.patch_size == 1
    img = pipe("a red square", num_inference_steps=2, height=32, width=32, guidance_scale=1.0,
               output_type="pt").images
    assert img.shape == (1, 3, 32, 32) and torch.isfinite(img).all()


def test_vae_loss_is_reconstruction_plus_weighted_kl_to_the_standard_normal(tmp_path, monkeypatch):
    """Against torch.distributions' KL: a fake encoder's posterior and a fake decoder's output fix every term."""
    from types import SimpleNamespace

    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    t = Pretrainer(replace(CFG, kl_weight=0.25), tmp_path / "run", log=lambda s: None)
    x, _ = _scenes(t.cfg, _rng(t.cfg.seed, 1, 0)[0], t.cfg.vae_batch)
    channels = t.pipe.vae.config.latent_channels
    g = torch.Generator().manual_seed(0)
    mean, logvar = (torch.randn(x.shape[0], channels, 4, 4, generator=g) for _ in range(2))
    rec = torch.rand(x.shape, generator=g)
    posterior = DiagonalGaussianDistribution(torch.cat([mean, logvar], 1))
    monkeypatch.setattr(t.pipe.vae, "encode", lambda images: SimpleNamespace(latent_dist=posterior))
    monkeypatch.setattr(t.pipe.vae, "decode", lambda z: SimpleNamespace(sample=rec))
    kl = torch.distributions.kl_divergence(torch.distributions.Normal(mean, (0.5 * logvar).exp()),
                                           torch.distributions.Normal(0.0, 1.0)).mean()
    expected = ((rec - x) ** 2).mean() + 0.1 * (rec - x).abs().mean() + 0.25 * kl
    assert float(t.vae_loss(0)) == pytest.approx(float(expected), rel=1e-5)


def test_cosine_schedule_warms_up_then_decays_to_zero_over_the_continued_steps(tmp_path):
    t = Pretrainer(replace(CFG, flow_steps=10, warmup=2, lr_schedule="cosine"), tmp_path / "run", log=lambda s: None)
    scales = []
    for step in range(10):
        t.flow_step = step
        scales.append(t._lr_scale())
    assert scales[0] == pytest.approx(0.5) and scales[1] == pytest.approx(0.5 * (1 + math.cos(math.pi / 10)))
    assert scales[5] == pytest.approx(0.5) and scales[9] == pytest.approx(0.5 * (1 + math.cos(0.9 * math.pi)))
    assert all(a > b for a, b in zip(scales[1:], scales[2:]))
    t.flow_start, t.flow_step = 6, 6  # a continued run: warmup and decay restart at its first step
    assert t._lr_scale() == pytest.approx(0.5)
    constant = Pretrainer(replace(CFG, flow_steps=10, warmup=2), tmp_path / "constant", log=lambda s: None)
    constant.flow_step = 9
    assert constant._lr_scale() == 1.0
    with pytest.raises(ConfigError, match="lr_schedule"):
        PretrainConfig(lr_schedule="linear")


def test_init_from_continues_an_exported_pipeline(tmp_path):
    source = Pretrainer(CFG, tmp_path / "stage1", log=lambda s: None)
    source.run()
    folder = source.export(tmp_path / "stage1_pipe")
    cfg = replace(CFG, flow_steps=5, init_from=str(folder), lr_schedule="cosine")
    t = Pretrainer(cfg, tmp_path / "stage2", log=lambda s: None)
    assert (t.vae_step, t.flow_step, t.flow_start) == (CFG.vae_steps, CFG.flow_steps, CFG.flow_steps)
    exported = source.ema_pipeline()
    for name in ("transformer", "vae"):
        for key, value in getattr(exported, name).state_dict().items():
            # exact by construction: export and init_from copy the tensors' bytes
            assert torch.equal(getattr(t.pipe, name).state_dict()[key], value), (name, key)
    assert t.pipe.vae.config.scaling_factor == source.pipe.vae.config.scaling_factor
    # the first continued loss is flow step 3 of the data stream, on the exported weights
    collapsed_attention.install(t.pipe.transformer, N_T5_PAD)
    with torch.no_grad():
        expected = float(t.flow_loss(CFG.flow_steps))
    collapsed_attention.uninstall(t.pipe.transformer)
    log = t.run()
    assert [r["phase"] for r in log] == ["flow", "flow"] and log[0]["loss"] == pytest.approx(expected, rel=1e-6)
    t.save_checkpoint()
    assert Pretrainer(cfg, tmp_path / "stage2", log=lambda s: None).flow_start == CFG.flow_steps  # resumable
    with pytest.raises(ConfigError, match="flow_steps"):
        Pretrainer(replace(cfg, flow_steps=3), tmp_path / "too_short", log=lambda s: None)
    with pytest.raises(ConfigError, match="pretrain_config.json"):
        Pretrainer(replace(cfg, init_from=str(tmp_path)), tmp_path / "not_a_pipeline", log=lambda s: None)
    other = Pretrainer(replace(CFG, vae_steps=1, flow_steps=1, arch=replace(ARCH, num_layers=2)), tmp_path / "other",
                       log=lambda s: None)
    other.run()
    with pytest.raises(ConfigError, match="architecture"):
        Pretrainer(replace(cfg, init_from=str(other.export(tmp_path / "other_pipe"))), tmp_path / "mismatch",
                   log=lambda s: None)
