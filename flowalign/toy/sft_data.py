"""``toy:sft``: rendered, verifier-perfect shapes-world scenes for the TRAINING prompts (never held-out ones).

Sample ``i`` is image ``k = i % images_per_prompt`` of prompt ``p = i // images_per_prompt`` (prompts in the order
of ``toy.prompts.train_prompts``). A prompt's images are laid out and rendered as pretraining renders its data
(``toy.scenes.generate_scenes``), from the key ``[seed, p]`` only, so they do not depend on which samples were
asked for first; they are made on first use and kept in memory (32×32 RGB: 12 KiB each).

Measured: the "shapes" verifier scores every image of seeds 0, 1 and 2 (998 prompts × 4 each) 1.0, "shapes_quality" 1.0
(layouts keep shapes apart and relations at a clear gap, so the renderer makes no ambiguous scene).
"""

from __future__ import annotations

import torch

from flowalign.data.dataset import ImageDataset
from flowalign.errors import ConfigError
from flowalign.toy.prompts import train_prompts
from flowalign.toy.scenes import SceneConfig, generate_scenes

DEFAULT_IMAGES_PER_PROMPT = 4


class ToySFTDataset(ImageDataset):
    """``images_per_prompt`` rendered scenes for every training prompt, deterministic given ``seed``."""

    def __init__(self, seed: int = 0, images_per_prompt: int = DEFAULT_IMAGES_PER_PROMPT,
                 scenes: SceneConfig = SceneConfig()) -> None:
        if images_per_prompt < 1:
            raise ConfigError(f"toy:sft: images_per_prompt must be >= 1, got {images_per_prompt}")
        self.seed, self.per_prompt, self.scene_config = int(seed), images_per_prompt, scenes
        self.prompt_list = list(train_prompts())
        prompts = [p for p in self.prompt_list for _ in range(images_per_prompt)]
        sources = [f"toy:sft (seed {seed}, prompt {i // images_per_prompt}, image {i % images_per_prompt})"
                   for i in range(len(prompts))]
        super().__init__("toy:sft", prompts, [{} for _ in prompts], sources)
        self._cache: dict[int, torch.Tensor] = {}  # prompt index -> (images_per_prompt, 3, H, W)

    def load(self, index: int) -> torch.Tensor:
        p, k = divmod(index, self.per_prompt)
        if p not in self._cache:
            prompt = self.prompt_list[p]
            self._cache[p], _, _ = generate_scenes(self.per_prompt, [self.seed, p], prompts=[prompt] * self.per_prompt,
                                                   config=self.scene_config)
        return self._cache[p][k]
