"""EMA of the trainable parameters: hand-computed shadows with an asymmetric decay, swap and state round trip."""

import pytest
import torch
from torch import nn

from flowalign.training.ema import EMA


def test_two_updates_match_the_hand_computed_shadow():
    """shadow ← 0.9·shadow + 0.1·param: from 1, params 2 then 3 give 1.1 then 0.9·1.1 + 0.1·3 = 1.29."""
    p = nn.Parameter(torch.tensor([1.0, -2.0]))
    ema = EMA([p], decay=0.9)
    with torch.no_grad():
        p.copy_(torch.tensor([2.0, 0.0]))
    ema.update()
    torch.testing.assert_close(ema.shadow[0], torch.tensor([1.1, -1.8]))
    with torch.no_grad():
        p.copy_(torch.tensor([3.0, 4.0]))
    ema.update()
    torch.testing.assert_close(ema.shadow[0], torch.tensor([1.29, -1.22]))
    torch.testing.assert_close(p.detach(), torch.tensor([3.0, 4.0]))  # the update leaves the parameter alone


def test_swapped_evaluates_with_the_shadow_and_restores_the_parameters():
    p = nn.Parameter(torch.tensor([1.0]))
    ema = EMA([p], decay=0.9)
    with torch.no_grad():
        p.fill_(11.0)
    ema.update()  # 0.9·1 + 0.1·11 = 2
    with ema.swapped():
        assert p.item() == pytest.approx(2.0)
    assert p.item() == 11.0
    restored = EMA([nn.Parameter(torch.tensor([0.0]))], decay=0.9)
    restored.load_state_dict(ema.state_dict())
    assert restored.shadow[0].item() == pytest.approx(2.0)


@pytest.mark.parametrize("decay", [-0.1, 1.0])
def test_decay_outside_the_unit_interval_is_refused(decay):
    with pytest.raises(ValueError, match="ema decay must lie in"):
        EMA([nn.Parameter(torch.zeros(1))], decay=decay)
