"""flowalign: align diffusion and flow-matching models with RL and preference optimization.

Conventions (everywhere in the package):
- σ runs from 1 (pure noise) to 0 (data): x_σ = (1 − σ)·x0 + σ·ε; the model predicts v ≈ ε − x0.
- A sampling step goes σ → σ' with dt = σ' − σ < 0.
- Latents are batch-first; reductions run over all non-batch dimensions (4-D images, 3-D packed Flux
  tokens, 5-D video).
- SDE math and log-probs are float32 whatever the transformer's dtype.
"""

from flowalign.errors import ConfigError, FlowAlignError, UnsupportedModelError

__version__ = "0.1.0"

__all__ = ["ConfigError", "FlowAlignError", "UnsupportedModelError", "__version__"]
