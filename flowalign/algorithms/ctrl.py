"""CTRL: add a new class-label control y to a pretrained flow model from an offline dataset of (image, y).

Our flow-model form of the method (the authors' code targets an older U-Net sampler); see docs/methods.md.

1. **Classifier** p̂(y | x0) on clean latents (an ``AuxiliaryNet`` with K logits at σ = 0, no text), trained by
   cross-entropy on the dataset's encoded images in the first iteration, then calibrated by temperature scaling
   on a held-out ``calibration_fraction`` (grid search of the NLL); the ECE before and after is logged
   (``classifier/ece_before``, ``classifier/ece_after``). It is frozen afterwards.
2. **Control embedding**: a zero-initialized table added to the transformer's pooled text conditioning
   (``flowalign.training.control``; the null row stays zero), trained with its own AdamW (``embedding_lr``)
   alongside the LoRA adapter. At initialization the model's output for any y is the base model's exactly.
3. **Objective**: per sample with a requested y drawn uniformly,
   L = −reward_scale · log p̂_T(y | x0) + α · Σ_steps KL(π_θ(·|x_t, y) ‖ π_pre(·|x_t)),
   x0 sampled by the flow SDE and differentiated through the last K steps (``RewardBackprop``'s machinery:
   checkpointing, fixed or random truncation), the KL per step in closed form against the pretrained model (adapter
   and control off), reduced by ``kl_reduction`` (``sum``: the true KL, for which α = 1 targets
   p(x | c, y) ∝ p(x | c)·p̂(y | x); ``mean`` divides it by the latent size, α is then not on that scale).
4. **Evaluation** every ``eval.every`` iterations (and before training, ``control/before/*``): ODE samples of
   ``eval_prompts`` held-out prompts × ``eval_seeds`` seeds per class; the label of each is measured (``toy_size``:
   the toy verifier's exact size reading; ``classifier``: p̂'s argmax) → ``control/accuracy`` (per requested y
   too) and ``control/macro_f1``; the run's reward of the same images → ``control/prompt_reward``.
After every iteration the embedding is written to ``<output_dir>/control.safetensors`` (format in
``training/control.py``), beside the adapter the trainer saves.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from flowalign.algorithms.base import register_algorithm
from flowalign.algorithms.reward_backprop import RewardBackprop, RewardBackpropConfig
from flowalign.errors import ConfigError
from flowalign.sampling import DynamicsConfig, make_generators, rollout
from flowalign.training.auxiliary import AuxiliaryConfig, AuxiliaryNet, AuxiliaryTrainer
from flowalign.training.control import ControlEmbedding, expected_calibration_error, fit_temperature, macro_f1
from flowalign.training.seeding import derive_seed, derived_generator

if TYPE_CHECKING:
    from flowalign.data.dataset import ImageDataset
    from flowalign.training.config import TrainConfig
    from flowalign.training.trainer import Trainer

MEASURES = ("toy_size", "classifier")


@dataclass
class CTRLConfig(RewardBackpropConfig):
    """``alpha`` >= 0 weighs the KL (``kl_beta`` is not used); ``dataset``: ``toy:size`` or a JSONL manifest whose
    rows carry the label in ``metadata[label_key]``; ``classes``: the labels, in classifier order;
    ``measure``: toy_size | classifier (how generated labels are read in evaluation)."""

    name: str = "ctrl"
    alpha: float = 1.0
    dataset: str = "toy:size"
    label_key: str = "label"
    classes: list[str] = field(default_factory=lambda: ["small", "large"])
    embedding_lr: float = 1e-3
    classifier_steps: int = 300
    classifier_batch_size: int = 64
    classifier_hidden: int = 64
    classifier_lr: float = 1e-3
    calibration_fraction: float = 0.25
    measure: str = "toy_size"
    eval_prompts: int = 12
    eval_seeds: int = 2

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.kl_beta != 0:
            raise ConfigError("ctrl weighs the KL with algorithm.alpha; leave algorithm.kl_beta at 0")
        if not self.alpha >= 0:
            raise ConfigError(f"algorithm.alpha must be >= 0, got {self.alpha}")
        if len(self.classes) < 2 or len(set(self.classes)) != len(self.classes):
            raise ConfigError(f"algorithm.classes must hold at least 2 distinct labels, got {self.classes}")
        for key in ("embedding_lr", "classifier_lr"):
            if not getattr(self, key) > 0:
                raise ConfigError(f"algorithm.{key} must be > 0, got {getattr(self, key)}")
        for key in ("classifier_steps", "classifier_batch_size", "classifier_hidden", "eval_prompts", "eval_seeds"):
            if getattr(self, key) < 1:
                raise ConfigError(f"algorithm.{key} must be >= 1, got {getattr(self, key)}")
        if not 0 < self.calibration_fraction < 1:
            raise ConfigError(f"algorithm.calibration_fraction must lie in (0, 1), got {self.calibration_fraction}")
        if self.measure not in MEASURES:
            raise ConfigError(f"algorithm.measure must be one of {', '.join(MEASURES)}, got {self.measure!r}")
        if self.measure == "toy_size":
            from flowalign.toy.size_control import SIZE_CLASSES

            if list(self.classes) != list(SIZE_CLASSES):
                raise ConfigError(f"algorithm.measure toy_size reads the classes {list(SIZE_CLASSES)}, but "
                                  f"algorithm.classes is {self.classes}")


def load_control_dataset(cfg: CTRLConfig) -> tuple[ImageDataset, Tensor]:
    """The dataset and its labels as class indices; a label outside ``cfg.classes`` or a class without a sample
    is a ``ConfigError`` naming the sample's source (manifest:line)."""
    from flowalign.data import load_image_dataset

    if cfg.dataset == "toy:size":
        from flowalign.toy.size_control import ToySizeDataset

        dataset = ToySizeDataset()
    else:
        dataset = load_image_dataset(cfg.dataset)
    labels = []
    for meta, source in zip(dataset.metadata, dataset.sources):
        label = meta.get(cfg.label_key)
        if label not in cfg.classes:
            raise ConfigError(f"{source}: label ({cfg.label_key!r}) {label!r} is not one of the classifier's "
                              f"classes {cfg.classes} (algorithm.classes)")
        labels.append(cfg.classes.index(label))
    labels = torch.tensor(labels)
    missing = [c for k, c in enumerate(cfg.classes) if not bool((labels == k).any())]
    if missing:
        raise ConfigError(f"dataset {cfg.dataset!r} has no sample of class(es) {missing} (algorithm.classes)")
    return dataset, labels


@register_algorithm("ctrl")
class CTRL(RewardBackprop):
    Config = CTRLConfig

    def kl_weight(self) -> float:
        return self.config.alpha

    def validate(self, config: TrainConfig) -> None:
        super().validate(config)
        self.dataset, self.labels = load_control_dataset(self.config)

    def setup(self, trainer: Trainer) -> None:
        cfg, model = self.config, trainer.model
        dim = model.pooled_text(model.encode_prompts([""])).shape[1]
        self.control = ControlEmbedding(cfg.classes, dim).to(trainer.device).attach(model.transformer)
        self.embedding_optimizer = torch.optim.AdamW([self.control.weight], lr=cfg.embedding_lr, weight_decay=0.0)
        with torch.random.fork_rng(devices=[]):  # the classifier's init leaves the global RNG as it was
            torch.manual_seed(derive_seed(trainer.config.seed, "ctrl_classifier"))
            net = AuxiliaryNet(model.latent_shape(trainer.geometry), 0,
                               AuxiliaryConfig(outputs=len(cfg.classes), hidden=cfg.classifier_hidden, text=False,
                                               lr=cfg.classifier_lr)).to(trainer.device)
        self.classifier = AuxiliaryTrainer(net)
        self.calibration: dict[str, float] = {}
        self.ready = False

    # -------------------------------------------------------------------------------------------- classifier
    def train_classifier(self, trainer: Trainer, it: int) -> dict[str, float]:
        """Cross-entropy on the training split, temperature scaling on the calibration split (ECE logged)."""
        cfg, model = self.config, trainer.model
        order = torch.randperm(len(self.labels), generator=derived_generator(trainer.config.seed, "ctrl_split"))
        n_cal = max(1, int(round(cfg.calibration_fraction * len(order))))
        cal, train = order[:n_cal], order[n_cal:]
        size = (trainer.geometry.height, trainer.geometry.width)
        with torch.no_grad():
            latents = torch.cat([model.encode_pixels(self.dataset.images(chunk, size).to(trainer.device),
                                                     trainer.geometry).float()
                                 for chunk in torch.split(torch.arange(len(self.labels)), 64)])
        labels = self.labels.to(trainer.device)
        gen = derived_generator(trainer.config.seed, "ctrl_classifier_batches")
        for _ in range(cfg.classifier_steps):
            pick = train[torch.randint(len(train), (min(cfg.classifier_batch_size, len(train)),), generator=gen)]
            self.classifier.classification_step(latents[pick], 0.0, None, labels[pick])
        with torch.no_grad():
            logits = self.classifier.net(latents[cal], 0.0).cpu()
        temperature = fit_temperature(logits, labels[cal].cpu())
        self.calibration = {
            "classifier/calibration_accuracy": float((logits.argmax(-1) == labels[cal].cpu()).float().mean()),
            "classifier/ece_before": expected_calibration_error(logits, labels[cal].cpu()),
            "classifier/ece_after": expected_calibration_error(logits / temperature, labels[cal].cpu()),
            "classifier/temperature": temperature,
        }
        self._freeze(temperature)
        return dict(self.calibration)

    def _freeze(self, temperature: float) -> None:
        self.classifier.net.requires_grad_(False).eval()
        self.control.temperature = temperature
        self.ready = True

    def log_likelihood(self, latents: Tensor, labels: Tensor) -> Tensor:
        """log p̂_T(y | x0) (B,) with the calibrated temperature; differentiable in ``latents``."""
        logits = self.classifier.net(latents, 0.0) / self.control.temperature
        return F.log_softmax(logits, -1).gather(1, labels.to(latents.device)[:, None])[:, 0]

    # ------------------------------------------------------------------------------------------- objective
    def iteration_samples(self, trainer: Trainer, it: int):
        prompts, metadata, seeds = super().iteration_samples(trainer, it)
        gen = derived_generator(trainer.config.seed, "control", it, trainer.rank)
        self.requested = torch.randint(len(self.config.classes), (len(prompts),), generator=gen)
        return prompts, metadata, seeds

    def sampling_context(self, trainer: Trainer, rows: Tensor, it: int):
        return self.control.requested(self.requested[rows])

    def sample_reward(self, trainer, final, prompts, metadata, rows, it):
        reward = self.log_likelihood(final, self.requested[rows])
        return reward, torch.isfinite(reward.detach())

    def zero_extra_grads(self) -> None:
        self.control.weight.grad = None

    def apply_update(self, trainer: Trainer, finite: bool, totals: dict, counts: dict) -> bool:
        """The adapter's step, then the embedding's (gradient averaged over processes, null row kept at zero,
        clipped to ``optim.max_grad_norm``); both or neither."""
        if not trainer.apply_update(finite, totals, counts):
            self.control.weight.grad = None
            return False
        weight = self.control.weight
        if weight.grad is None:
            weight.grad = torch.zeros_like(weight)
        if trainer.world > 1:
            weight.grad = trainer.accelerator.reduce(weight.grad, reduction="mean")
        self.control.zero_null_grad()
        norm = torch.nn.utils.clip_grad_norm_([weight], trainer.config.optim.max_grad_norm)
        totals["embedding_grad_norm"] = totals.get("embedding_grad_norm", 0.0) + float(norm)
        counts["embedding_grad_norm"] = counts.get("embedding_grad_norm", 0) + 1
        self.embedding_optimizer.step()
        return True

    # ------------------------------------------------------------------------------------------ iteration
    def train_iteration(self, trainer: Trainer, it: int) -> dict[str, float]:
        metrics = {} if self.ready else self.train_classifier(trainer, it)
        if it == 0:
            metrics.update({k.replace("control/", "control/before/"): v
                            for k, v in self.evaluate_control(trainer).items()})
        metrics.update(super().train_iteration(trainer, it))
        done = it + 1
        if done % trainer.config.eval.every == 0 or done == trainer.config.iterations:
            metrics.update(self.evaluate_control(trainer))
        if trainer.accelerator.is_main_process:
            self.control.save(trainer.out / "control.safetensors")
        return metrics

    @torch.no_grad()
    def evaluate_control(self, trainer: Trainer) -> dict[str, float]:
        """Measured label accuracy per requested class, macro-F1 and the run's reward of the same ODE samples."""
        from flowalign.toy.size_control import measure_size_labels
        from flowalign.training.rewarding import decode_and_score

        cfg, model, ev = self.config, trainer.model, trainer.config.eval
        eval_set = trainer.eval_set
        n = min(cfg.eval_prompts, len(eval_set))
        prompts = [eval_set.prompts[i] for i in range(n) for _ in range(cfg.eval_seeds)]
        metadata = [eval_set.metadata[i] for i in range(n) for _ in range(cfg.eval_seeds)]
        seeds = [ev.seed + j for j in range(len(prompts))]
        guidance = ev.guidance_scale if ev.guidance_scale is not None else trainer.config.sampling.guidance_scale
        use_cfg = model.uses_cfg(guidance)
        cond = model.encode_prompts(prompts, trainer.config.data.negative_prompt if use_cfg else None,
                                    with_negative=use_cfg)
        measured, target, rewards, metrics = [], [], [], {}
        with trainer.evaluated_weights():
            for k, name in enumerate(cfg.classes):
                labels = torch.full((len(prompts),), k)
                with self.control.requested(labels):
                    final = rollout(model, cond, trainer.geometry, num_steps=ev.num_steps,
                                    dynamics=DynamicsConfig("ode", 0.0), guidance_scale=guidance,
                                    generators=make_generators(seeds, trainer.device)).final
                scored = decode_and_score(model, trainer.reward, final, trainer.geometry, prompts, metadata)
                got = (measure_size_labels(scored.pixels) if cfg.measure == "toy_size"
                       else self.classifier.net(final, 0.0).argmax(-1).cpu())
                metrics[f"control/accuracy/{name}"] = float((got == k).float().mean())
                measured.append(got)
                target.append(labels)
                rewards.append(scored.rewards)
        measured, target = torch.cat(measured), torch.cat(target)
        metrics["control/accuracy"] = float((measured == target).float().mean())
        metrics["control/macro_f1"] = macro_f1(measured, target, len(cfg.classes))
        metrics["control/unmeasured"] = float((measured < 0).float().mean())
        metrics["control/prompt_reward"] = float(torch.cat(rewards).mean())
        return metrics

    # ---------------------------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict:
        return {"embedding": self.control.weight.detach().cpu().clone(),
                "embedding_optimizer": self.embedding_optimizer.state_dict(),
                "classifier": self.classifier.state_dict(), "ready": int(self.ready),
                "temperature": float(self.control.temperature), "calibration": dict(self.calibration)}

    def load_state_dict(self, state: dict) -> None:
        with torch.no_grad():
            self.control.weight.copy_(state["embedding"])
        self.embedding_optimizer.load_state_dict(state["embedding_optimizer"])
        self.classifier.load_state_dict(state["classifier"])
        self.calibration = {k: float(v) for k, v in state["calibration"].items()}
        if int(state["ready"]):
            self._freeze(float(state["temperature"]))
