"""The benchmarks' own logic that a run on an accelerator depends on (their figures are printed, not tested)."""
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))

from iimagen.configs import get_config  # noqa: E402


@pytest.mark.parametrize("name", ["tiny", "small", "base"])
def test_peer_widths_give_whole_heads(name):
    from sampling import peer_widths

    cfg = get_config(name)
    widths = peer_widths(cfg)
    assert widths, "the peer search needs at least one width"
    for c in widths:
        assert c % 32 == 0                                   # diffusers' GroupNorm(32)
        assert c * cfg.channel_mult[-1] % cfg.head_dim == 0  # its lowest level splits into whole heads
    if name == "small":
        assert 160 not in widths and 192 in widths           # 480 channels do not split into heads of 64
