"""The guide's second example: a CNN with a Dropout layer, on 3x64x64 images.

One 2x2 pooling turns the 16 feature maps of 64x64 into 16 x 32 x 32 values, the input size of
the first fully connected layer; dropkit's model derives that size from image_size.
"""

import torch

from dropkit.app.models import SimpleCNNWithDropout

input_tensor = torch.randn(32, 3, 64, 64)  # a batch of 32 RGB images of size 64x64
model = SimpleCNNWithDropout(dropout_prob=0.5)
output = model(input_tensor)
print(f"Output shape: {tuple(output.shape)}")
