"""Which Linear of each supported block type carries a membrane (every attention and feed-forward one), and why
the others do not; SD3.5's second self-attention ``attn2`` included."""

import torch
from diffusers import FluxTransformer2DModel, SD3Transformer2DModel
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from flowalign.erasure import SPMNetwork, load_spm, save_spm, target_layers
from flowalign.erasure.membrane import JOINT_TARGETS

ATTENTION = {"attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0",
             "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out"}
ATTN2 = {"attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0"}
FEED_FORWARD = {"ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2"}
#: not covered, and why: AdaLN modulation, i.e. shifts/scales computed from the timestep + pooled-text embedding,
#: not a map of the tokens (the original SPM's targets are attention and feed-forward linears)
MODULATION = {"norm1.linear", "norm1_context.linear", "norm.linear"}
FLUX_SINGLE = {"attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp", "proj_out"}  # proj_mlp: feed-forward in;
# proj_out: the shared output of attention and feed-forward


def tiny_sd35_transformer(num_layers: int = 3) -> SD3Transformer2DModel:
    """SD3.5-medium's layout in miniature: dual attention (attn2) in the first blocks, RMS q/k norms, and the last
    block context_pre_only."""
    torch.manual_seed(0)
    return SD3Transformer2DModel(sample_size=16, patch_size=2, in_channels=4, out_channels=4, num_layers=num_layers,
                                 attention_head_dim=16, num_attention_heads=2, joint_attention_dim=64,
                                 caption_projection_dim=32, pooled_projection_dim=64, dual_attention_layers=(0, 1),
                                 qk_norm="rms_norm").eval()


def tiny_flux_transformer() -> FluxTransformer2DModel:
    torch.manual_seed(0)
    return FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                  attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                  pooled_projection_dim=32, guidance_embeds=True, axes_dims_rope=(4, 6, 6)).eval()


def _block_linears(transformer: nn.Module, prefix: str) -> set[str]:
    return {n[len(prefix):] for n, m in transformer.named_modules()
            if n.startswith(prefix) and isinstance(m, nn.Linear)}


def _covered(transformer: nn.Module, prefix: str) -> set[str]:
    return {n[len(prefix):] for n in target_layers(transformer) if n.startswith(prefix)}


def test_every_linear_of_each_block_type_is_covered_or_explained():
    sd35, flux = tiny_sd35_transformer(), tiny_flux_transformer()
    blocks = {  # block prefix: (transformer, its Linears that must carry a membrane)
        "transformer_blocks.0.": (sd35, ATTENTION | ATTN2 | FEED_FORWARD),  # SD3.5 dual-attention block
        "transformer_blocks.2.": (sd35, ATTENTION - {"attn.to_add_out"} | {"ff.net.0.proj", "ff.net.2"}),  # last
        "flux:transformer_blocks.0.": (flux, ATTENTION | FEED_FORWARD),
        "flux:single_transformer_blocks.0.": (flux, FLUX_SINGLE),
    }
    for key, (transformer, expected) in blocks.items():
        prefix = key.removeprefix("flux:")
        linears = _block_linears(transformer, prefix)
        assert _covered(transformer, prefix) == expected, key
        assert linears - expected <= MODULATION, (key, linears - expected)  # the rest: AdaLN modulation only
        assert linears - expected, key  # (each block type has modulation linears, so the check above bites)
    # outside the blocks: embedders, final norm and projection carry none
    assert all(n.startswith(("transformer_blocks.", "single_transformer_blocks.")) for n in target_layers(sd35))
    assert set(JOINT_TARGETS) >= ATTN2


def _forward(transformer: SD3Transformer2DModel) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return transformer(hidden_states=torch.randn(1, 4, 16, 16, generator=g),
                       encoder_hidden_states=torch.randn(1, 5, 64, generator=g),
                       pooled_projections=torch.randn(1, 64, generator=g), timestep=torch.tensor([500.0]),
                       return_dict=False)[0]


def test_every_attn2_linear_of_a_tiny_sd35_transformer_carries_an_acting_membrane():
    transformer = tiny_sd35_transformer()
    net = SPMNetwork.for_transformer(transformer, ["dog"]).attach(transformer)
    attn2 = [n for n in net.layer_names if ".attn2." in n]
    assert sorted(attn2) == sorted(f"transformer_blocks.{b}.{s}" for b in (0, 1) for s in ATTN2)
    with torch.no_grad():
        plain = _forward(transformer)
        for name in attn2:  # each attn2 membrane alone changes the output when it is non-zero
            net.membrane(name).up.fill_(0.05)
            assert (_forward(transformer) - plain).abs().max() > 1e-4, name
            net.membrane(name).up.zero_()
        # all zero again: the same module and inputs as `plain`, so the output is bit-identical
        assert torch.equal(_forward(transformer), plain)
    net.detach()


def test_a_file_from_before_attn2_was_covered_loads_with_no_op_attn2_membranes(tmp_path):
    transformer = tiny_sd35_transformer()
    net = SPMNetwork.for_transformer(transformer, ["dog"])
    with torch.no_grad():
        for m in net.membranes.values():
            m.up.normal_(0, 0.05, generator=torch.Generator().manual_seed(2))
    path = save_spm(net, transformer, tmp_path / "new.safetensors")
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys() if ".attn2." not in k}
    save_file(tensors, str(tmp_path / "old.safetensors"), metadata=metadata)
    old = load_spm(transformer, tmp_path / "old.safetensors")
    assert all(old.membrane(n).up.abs().sum() == 0 for n in old.layer_names if ".attn2." in n)
    with torch.no_grad():
        with_old = _forward(transformer)
        old.detach()
        for name in net.layer_names:
            if ".attn2." in name:
                net.membrane(name).up.zero_()
        net.attach(transformer)
        expected = _forward(transformer)
    net.detach()
    # two SPMNetwork instances with equal weights on the same inputs: the same ops, so equal to fp32 rounding
    torch.testing.assert_close(with_old, expected, rtol=0, atol=1e-6)
