"""DepthScaling against timm's own drop_path_rate rule, on real timm models."""

import pytest
import torch
from interop_helpers import real

import dropkit
from dropkit.patch import set_dropout
from dropkit.schedules import DepthScaling


def _timm_rates(model, paths):
    """timm's rate of each drop path, 0.0 where timm built an Identity (rate 0)."""
    return {n: float(getattr(model.get_submodule(n), "drop_prob", 0.0)) for n in paths}


@pytest.mark.parametrize("patched", [False, True], ids=["timm", "patched"])
def test_vit_blocks_get_timms_linspace(patched):
    timm = real("timm")
    torch.manual_seed(0)
    depth, rate = 6, 0.3
    model = timm.models.VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=depth, num_heads=2,
                                          drop_path_rate=rate)
    paths = [f"blocks.{i}.drop_path{k}" for i in range(depth) for k in (1, 2)]
    expected = _timm_rates(model, paths)
    # timm's rule, as timm writes it: linspace(0, drop_path_rate, depth), one rate per block.
    linspace = [x.item() for x in torch.linspace(0, rate, depth)]
    assert expected == {f"blocks.{i}.drop_path{k}": linspace[i] for i in range(depth) for k in (1, 2)}
    if patched:
        dropkit.patch(model, seed=0)
    set_dropout(model, 0.0)  # forget timm's rates: DepthScaling must find them again
    schedule = DepthScaling(model, p=rate)
    assert schedule.names == paths[2:]  # block 0 holds Identity modules
    for name in schedule.names:
        module = model.get_submodule(name)
        got = module.p if patched else module.drop_prob
        assert got == pytest.approx(expected[name], abs=1e-7)
        assert model.get_submodule(name.rpartition(".")[0] + ".attn").attn_drop.p == 0.0


def test_swin_blocks_across_stages_get_timms_global_linspace():
    timm = real("timm")
    depths, rate = (2, 2, 4), 0.2
    model = timm.models.SwinTransformer(img_size=32, patch_size=2, window_size=2, embed_dim=8, depths=depths,
                                        num_heads=(1, 2, 4), drop_path_rate=rate)
    paths = [n for n, m in model.named_modules() if type(m).__name__ == "DropPath"]
    expected = _timm_rates(model, paths)
    set_dropout(model, 0.0)
    DepthScaling(model, p=rate)
    got = {n: model.get_submodule(n).drop_prob for n in paths}
    assert got == pytest.approx(expected, abs=1e-7)
    assert max(got.values()) == pytest.approx(rate)
