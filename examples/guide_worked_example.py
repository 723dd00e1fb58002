"""The guide's worked example, x = [1, 2, 3, 4, 5] with p = 0.4, in both conventions.

The guide says the inference output is x / 0.6. That is wrong in either convention:
inverted dropout (PyTorch's) scales by 1 / (1 - p) in training and leaves x unchanged at
inference; classic dropout leaves kept units unscaled in training and multiplies by (1 - p) at
inference. See docs/guide-corrected.md.
"""

import torch

import dropkit

x = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
p = 0.4
for mode in ("inverted", "classic"):
    layer = dropkit.Dropout(p, mode=mode, seed=0)
    train = layer(x)
    layer.eval()
    infer = layer(x)
    rounded = [[round(v, 4) for v in t.tolist()] for t in (train, infer)]
    print(f"{mode:>8}: train {rounded[0]}  eval {rounded[1]}")
