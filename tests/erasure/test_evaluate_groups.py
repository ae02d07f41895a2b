"""erasure_report: several seeds per prompt, and named target subsets measured on the same images."""

import pytest
import torch

from flowalign.erasure import FacilitatedTransport, SPMNetwork
from flowalign.erasure.evaluate import erasure_report
from flowalign.errors import ConfigError
from flowalign.models import load_model
from flowalign.models.tiny import tiny_sd3_pipeline

TARGETS = ["a red circle", "two red squares", "a red triangle"]


def test_groups_partition_the_target_images_and_repeats_add_seeds():
    model = load_model(tiny_sd3_pipeline())
    spm = SPMNetwork.for_transformer(model.transformer, ["red"])
    with torch.no_grad():
        for m in spm.membranes.values():
            m.up.normal_(0, 0.2, generator=torch.Generator().manual_seed(0))
    spm.attach(model.transformer)
    groups = {"singular": [TARGETS[0], TARGETS[2]], "plural": [TARGETS[1]]}
    report = erasure_report(model, spm, FacilitatedTransport(model, spm.phrasings), TARGETS, [], steps=2,
                            repeats=2, target_groups=groups)
    target, singular, plural = report["target"], report["target_singular"], report["target_plural"]
    assert (target["num_prompts"], singular["num_prompts"], plural["num_prompts"]) == (6, 4, 2)
    assert target["pixel_mad"] > 0 and "preserve" not in report
    # the groups are the same images split in two: their image-weighted mean MAD is the whole one (fp32 rounding)
    weighted = (4 * singular["pixel_mad"] + 2 * plural["pixel_mad"]) / 6
    torch.testing.assert_close(torch.tensor(weighted), torch.tensor(target["pixel_mad"]), rtol=1e-5, atol=0)
    with pytest.raises(ConfigError, match="not targets"):
        erasure_report(model, spm, None, TARGETS, [], steps=1, target_groups={"x": ["a blue square"]})
    with pytest.raises(ConfigError, match="repeats"):
        erasure_report(model, spm, None, TARGETS, [], steps=1, repeats=0)
    spm.detach()
