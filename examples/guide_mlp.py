"""The guide's first example: an MLP with a Dropout layer, using dropkit.Dropout."""

import torch

from dropkit.app.models import SimpleModelWithDropout

input_tensor = torch.randn(32, 64)  # a batch of 32 samples with 64 features
model = SimpleModelWithDropout(dropout_prob=0.5)
output = model(input_tensor)
print(f"Output shape: {tuple(output.shape)}")
