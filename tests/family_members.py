"""Every member of the dropout family, as a call on one input tensor: the list that the tests of
tensor kinds (tests/test_tensor_kinds.py) and of DTensor inputs (tests/test_dtensor.py) walk.

Each entry maps a name to ``(call, shape)``: ``call(x, seed)`` runs the member in training on the
floating-point tensor ``x`` of shape ``shape`` with a fixed seed; layers are built inside the
call with ``torch.manual_seed(0)`` first, so that any weights they hold are the same in every
process and every call. Weights and index tensors are made on the CPU and follow a CUDA input
(tests/test_cuda.py), so both devices see the same ones.
"""

import torch
from torch import nn

import dropkit
import dropkit.functional as F


def _follow(obj, x):
    """``obj`` (a module or a tensor made on the CPU) on ``x``'s device when that is CUDA."""
    return obj.to(x.device) if x.device.type == "cuda" else obj


def _layer(factory):
    def call(x, seed):
        torch.manual_seed(0)
        return _follow(factory(seed), x)(x)

    return call


def _attention(x, seed):
    return F.scaled_dot_product_attention(x, x, x, dropout_p=0.3, seed=seed)


def _mha(x, seed):
    torch.manual_seed(0)
    m = _follow(dropkit.MultiheadAttention(4, 2, dropout=0.3, batch_first=True, seed=seed), x)
    return m(x, x, x, need_weights=False)[0]


def _fused(x, seed):
    weight = torch.ones(x.shape[-1], dtype=x.dtype, device=x.device)
    return F.dropout_add_norm(x, x, weight, p=0.3, seed=seed)


def _concrete(x, seed):
    return F.concrete_dropout(x, _follow(torch.tensor(-1.0), x), seed=seed)


def _embedding_dropout(x, seed):
    return F.embedding_dropout(_follow(torch.tensor([[0, 2], [1, 3]]), x), x, 0.3, seed=seed)


def _drop_connect(x, seed):
    torch.manual_seed(0)
    linear = _follow(nn.Linear(x.shape[-1], 3), x)
    return F.drop_connect(linear, (x,), 0.3, seed=seed)


def _mc_dropout(x, seed):
    from dropkit.uncertainty import mc_dropout

    torch.manual_seed(0)
    model = _follow(nn.Sequential(nn.Identity(), dropkit.Dropout(0.3, seed=seed)), x)
    model.eval()
    with mc_dropout(model):
        return model(x)


# name -> (call(x, seed), input shape)
MEMBERS = {
    "functional.dropout": (lambda x, s: F.dropout(x, 0.3, seed=s), (4, 6)),
    "functional.dropout[shared_dims]": (lambda x, s: F.dropout(x, 0.3, shared_dims=(1,), seed=s), (4, 6)),
    "functional.dropout1d": (lambda x, s: F.dropout1d(x, 0.3, seed=s), (2, 3, 5)),
    "functional.dropout2d": (lambda x, s: F.dropout2d(x, 0.3, seed=s), (2, 3, 4, 4)),
    "functional.dropout3d": (lambda x, s: F.dropout3d(x, 0.3, seed=s), (2, 3, 2, 2, 2)),
    "functional.alpha_dropout": (lambda x, s: F.alpha_dropout(x, 0.3, seed=s), (4, 6)),
    "functional.feature_alpha_dropout": (lambda x, s: F.feature_alpha_dropout(x, 0.3, seed=s), (2, 3, 4)),
    "functional.drop_path": (lambda x, s: F.drop_path(x, 0.3, seed=s), (6, 3)),
    "functional.gaussian_dropout": (lambda x, s: F.gaussian_dropout(x, 0.3, seed=s), (4, 5)),
    "functional.gaussian_noise": (lambda x, s: F.gaussian_noise(x, 0.3, seed=s), (4, 5)),
    "functional.drop_block2d": (lambda x, s: F.drop_block2d(x, 0.3, 3, seed=s), (2, 2, 6, 6)),
    "functional.drop_block3d": (lambda x, s: F.drop_block3d(x, 0.3, 2, seed=s), (1, 2, 4, 4, 4)),
    "functional.locked_dropout": (lambda x, s: F.locked_dropout(x, 0.3, seed=s), (5, 2, 3)),
    "functional.concrete_dropout": (_concrete, (4, 6)),
    "functional.embedding_dropout": (_embedding_dropout, (4, 3)),
    "functional.drop_connect": (_drop_connect, (2, 4)),
    "functional.dropout_add_norm": (_fused, (4, 6)),
    "functional.scaled_dot_product_attention": (_attention, (2, 2, 4, 8)),
    "Dropout": (_layer(lambda s: dropkit.Dropout(0.3, seed=s)), (4, 6)),
    "Dropout1d": (_layer(lambda s: dropkit.Dropout1d(0.3, seed=s)), (2, 3, 5)),
    "Dropout2d": (_layer(lambda s: dropkit.Dropout2d(0.3, seed=s)), (2, 3, 4, 4)),
    "Dropout3d": (_layer(lambda s: dropkit.Dropout3d(0.3, seed=s)), (2, 3, 2, 2, 2)),
    "AlphaDropout": (_layer(lambda s: dropkit.AlphaDropout(0.3, seed=s)), (4, 6)),
    "FeatureAlphaDropout": (_layer(lambda s: dropkit.FeatureAlphaDropout(0.3, seed=s)), (2, 3, 4)),
    "GaussianDropout": (_layer(lambda s: dropkit.GaussianDropout(0.3, seed=s)), (4, 5)),
    "GaussianNoise": (_layer(lambda s: dropkit.GaussianNoise(0.3, seed=s)), (4, 5)),
    "DropPath": (_layer(lambda s: dropkit.DropPath(0.3, seed=s)), (6, 3)),
    "StochasticDepth": (_layer(lambda s: dropkit.StochasticDepth(0.3, "batch", seed=s)), (6, 3)),
    "DropBlock2d": (_layer(lambda s: dropkit.DropBlock2d(0.3, 3, seed=s)), (2, 2, 6, 6)),
    "DropBlock3d": (_layer(lambda s: dropkit.DropBlock3d(0.3, 2, seed=s)), (1, 2, 4, 4, 4)),
    "LockedDropout": (_layer(lambda s: dropkit.LockedDropout(0.3, seed=s)), (5, 2, 3)),
    "DropConnect": (_layer(lambda s: dropkit.DropConnect(nn.Linear(4, 3), 0.3, seed=s)), (2, 4)),
    "ConcreteDropout": (_layer(lambda s: dropkit.ConcreteDropout(nn.Linear(6, 3), 0.3, seed=s)), (4, 6)),
    "MultiheadAttention": (_mha, (2, 3, 4)),
    "MCDropout": (_mc_dropout, (4, 6)),
}
NAMES = sorted(MEMBERS)
