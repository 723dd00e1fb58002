"""The example models of the dropout guide, with sizes configurable and dropout replaceable.

:class:`SimpleModelWithDropout` and :class:`SimpleCNNWithDropout` are the guide's two models;
:class:`WideMLPWithDropout` is the demo's default: two wide hidden layers, enough capacity to
overfit 150 digits visibly, which the guide's single 128-unit layer does not.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from dropkit.layers import Dropout

__all__ = ["SimpleCNNWithDropout", "SimpleModelWithDropout", "WideMLPWithDropout"]

DropoutFactory = Callable[[float], nn.Module]


def _positive(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


class SimpleModelWithDropout(nn.Module):
    """The guide's MLP: ``Linear(in, hidden) -> ReLU -> dropout -> Linear(hidden, classes)``.

    Args:
        dropout_prob: the dropout rate p. Default: 0.5.
        in_features: input size. Default: 64 (an 8x8 digit).
        hidden: hidden width. Default: 128.
        num_classes: output size. Default: 10.
        dropout: a factory ``p -> nn.Module`` for the dropout layer (default :class:`dropkit.Dropout`);
            pass ``torch.nn.Dropout`` to compare with PyTorch's layer.
        input_dropout: rate of an extra dropout on the input (0 disables it).

    Shape:
        Input: ``(N, in_features)``. Output: ``(N, num_classes)`` (logits).

    Example:
        >>> model = SimpleModelWithDropout(dropout_prob=0.5)
        >>> model(torch.randn(32, 64)).shape
        torch.Size([32, 10])
    """

    def __init__(
        self,
        dropout_prob: float = 0.5,
        *,
        in_features: int = 64,
        hidden: int = 128,
        num_classes: int = 10,
        dropout: DropoutFactory = Dropout,
        input_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.input_dropout = dropout(input_dropout) if input_dropout > 0 else nn.Identity()
        self.fc1 = nn.Linear(_positive("in_features", in_features), _positive("hidden", hidden))
        self.dropout = dropout(dropout_prob)
        self.fc2 = nn.Linear(hidden, _positive("num_classes", num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.input_dropout(x)
        x = torch.relu(self.fc1(x))
        x = self.dropout(x)
        return self.fc2(x)


class SimpleCNNWithDropout(nn.Module):
    """The guide's CNN: conv 3x3 -> ReLU -> maxpool 2 -> flatten -> fc -> ReLU -> dropout -> fc.

    Args:
        dropout_prob: the dropout rate p. Default: 0.5.
        in_channels: input channels. Default: 3.
        channels: conv output channels. Default: 16.
        image_size: input height and width (square, even). Default: 64.
        hidden: width of the first fully connected layer. Default: 128.
        num_classes: output size. Default: 10.
        dropout: a factory ``p -> nn.Module`` for the dropout layer (default :class:`dropkit.Dropout`).
        input_dropout: rate of an extra dropout on the input pixels (0 disables it).

    Shape:
        Input: ``(N, in_channels, image_size, image_size)``. Output: ``(N, num_classes)``.

    Example:
        >>> model = SimpleCNNWithDropout(dropout_prob=0.5)
        >>> model(torch.randn(2, 3, 64, 64)).shape
        torch.Size([2, 10])
        >>> digits = SimpleCNNWithDropout(in_channels=1, image_size=8)  # sklearn's 8x8 digits
        >>> digits(torch.randn(2, 1, 8, 8)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        dropout_prob: float = 0.5,
        *,
        in_channels: int = 3,
        channels: int = 16,
        image_size: int = 64,
        hidden: int = 128,
        num_classes: int = 10,
        dropout: DropoutFactory = Dropout,
        input_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.input_dropout = dropout(input_dropout) if input_dropout > 0 else nn.Identity()
        if _positive("image_size", image_size) % 2:
            raise ValueError(f"image_size must be even (it is pooled by 2), got {image_size}")
        in_channels = _positive("in_channels", in_channels)
        self.conv1 = nn.Conv2d(in_channels, _positive("channels", channels), kernel_size=3, padding=1)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2)
        side = image_size // 2
        self.fc1 = nn.Linear(channels * side * side, _positive("hidden", hidden))
        self.dropout = dropout(dropout_prob)
        self.fc2 = nn.Linear(hidden, _positive("num_classes", num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.input_dropout(x)
        x = self.pool(self.relu(self.conv1(x)))
        x = x.flatten(1)
        x = torch.relu(self.fc1(x))
        x = self.dropout(x)
        return self.fc2(x)


class WideMLPWithDropout(nn.Module):
    """Two wide hidden layers, each followed by dropout, as in Srivastava et al. (JMLR 2014).

    ``dropout(input_p) -> Linear(in, hidden) -> ReLU -> dropout(p) -> Linear(hidden, hidden) ->
    ReLU -> dropout(p) -> Linear(hidden, classes)``. With ``hidden=256`` it has 85k weights,
    so on 150 training digits it memorizes the set and its test loss rises with the
    epochs unless dropout holds it back.

    Args:
        dropout_prob: the hidden dropout rate p. Default: 0.5.
        in_features: input size. Default: 64 (an 8x8 digit).
        hidden: width of both hidden layers. Default: 256.
        num_classes: output size. Default: 10.
        dropout: a factory ``p -> nn.Module`` for the dropout layers (default :class:`dropkit.Dropout`).
        input_dropout: rate of the dropout on the input (0 disables it).

    Shape:
        Input: ``(N, in_features)``. Output: ``(N, num_classes)`` (logits).

    Example:
        >>> model = WideMLPWithDropout(dropout_prob=0.5, input_dropout=0.2)
        >>> model(torch.randn(32, 64)).shape
        torch.Size([32, 10])
        >>> sum(p.numel() for p in model.parameters())
        85002
    """

    def __init__(
        self,
        dropout_prob: float = 0.5,
        *,
        in_features: int = 64,
        hidden: int = 256,
        num_classes: int = 10,
        dropout: DropoutFactory = Dropout,
        input_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.input_dropout = dropout(input_dropout) if input_dropout > 0 else nn.Identity()
        self.fc1 = nn.Linear(_positive("in_features", in_features), _positive("hidden", hidden))
        self.dropout1 = dropout(dropout_prob)
        self.fc2 = nn.Linear(hidden, hidden)
        self.dropout2 = dropout(dropout_prob)
        self.fc3 = nn.Linear(hidden, _positive("num_classes", num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.input_dropout(x)
        x = self.dropout1(torch.relu(self.fc1(x)))
        x = self.dropout2(torch.relu(self.fc2(x)))
        return self.fc3(x)
