"""SPM: one-dimensional concept-erasure adapters (membranes) for SD3 and Flux transformers; see docs/erasure.md."""

from flowalign.erasure.files import architecture, export_lora, load_spm, network_from_file, read_spm, save_spm
from flowalign.erasure.membrane import SPMNetwork, layer_shapes, merge, target_layers
from flowalign.erasure.transport import FacilitatedTransport

__all__ = ["FacilitatedTransport", "SPMNetwork", "architecture", "export_lora", "layer_shapes", "load_spm", "merge",
           "network_from_file", "read_spm", "save_spm", "target_layers"]
