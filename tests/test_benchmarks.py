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


def test_data_trees_are_checked_before_any_run(tmp_path):
    """benchmarks/data.py --trees: label=path pairs, each the root of a source tree, at least two."""
    from data import parse_trees

    root = os.path.join(os.path.dirname(__file__), "..")
    trees = parse_trees(f"old={root},new={root}")
    assert list(trees) == ["old", "new"] and (trees["new"] / "iimagen" / "__init__.py").is_file()
    for bad in (f"old={root}", f"{root}", f"old={tmp_path},new={root}"):
        with pytest.raises(SystemExit):
            parse_trees(bad)
