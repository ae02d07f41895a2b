"""Sub-commands of the ``flowalign`` CLI. Each module's ``add_parser`` imports nothing heavy (no torch, no
diffusers), so ``flowalign --help`` and argument errors answer at once; the run functions import what they use."""

#: ``--dtype`` choices, resolved with ``getattr(torch, name)`` when a command runs
DTYPE_NAMES = ("float32", "bfloat16", "float16")
DEVICE_HELP = "cpu or cuda (default: cuda when available)"


def resolve_device(device: str | None) -> str:
    """``--device`` as given, or cuda when available, else cpu."""
    if device is not None:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
