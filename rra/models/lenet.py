"""LeNet-5 with every atomic operation as its own named module (methods.md §4).

conv1 6@5×5 pad 2 → relu1 → pool1 (max 2×2) → conv2 16@5×5 → relu2 → pool2 (max 2×2)
→ conv3 120@5×5 → relu3 → flatten → fc1 84 → relu4 → fc2 num_classes.
[source: LeCun et al. 1998, with ReLU and max-pooling as in methods.md; "pad 2" lets a 28×28
image play the role of the original 32×32 input]

Other sizes [ours]: the layers are the same and conv3's output is S × S with
S = ⌊(⌊H/2⌋ − 4)/2⌋ − 4 (28 → 1, 32 → 2, 64 → 10); it is flattened and fc1 takes 120·S²
inputs.
Inputs smaller than 28 leave no room for conv3 and are refused. The flatten is a reshape in
``forward`` (not a hook point: it only re-lays out relu3's output). ReLUs are not in-place.
Parameters at 1×28×28, 10 classes: 61,706. Initialisation: PyTorch defaults.

``analyse_input = True``: the embed stage (``embed.input: auto``) and ``rra.api.analyse`` add
the input hook ``input`` before conv1 by default, so the chain of hook points starts at the
image, I, C0, R0, P0, … O, as in the NNTS/NNTP paper [source: arXiv:2012.03793] (12 points).
"""

from __future__ import annotations

import torch
from torch import nn

from .registry import positive_int

MIN_IMAGE_SIZE = 28


def conv3_size(image_size: int) -> int:
    """Side of conv3's output map for a square input of side ``image_size``."""
    return ((image_size // 2) - 4) // 2 - 4


class LeNet5(nn.Module):
    """LeNet-5; ``hook_names`` lists all eleven modules in forward order; analyses add the
    input hook ``input`` first by default (``analyse_input``)."""

    #: analyses embed the (normalised) input as hook ``input`` at position 0 by default
    analyse_input: bool = True

    def __init__(self, in_channels: int, num_classes: int, image_size: int) -> None:
        super().__init__()
        if image_size < MIN_IMAGE_SIZE:
            raise ValueError(f"lenet5: image_size must be at least {MIN_IMAGE_SIZE} "
                             f"(conv3 needs a 5×5 map after two poolings), got {image_size}")
        side = conv3_size(image_size)
        self.conv1 = nn.Conv2d(in_channels, 6, 5, padding=2)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.conv3 = nn.Conv2d(16, 120, 5)
        self.relu3 = nn.ReLU()
        self.fc1 = nn.Linear(120 * side * side, 84)
        self.relu4 = nn.ReLU()
        self.fc2 = nn.Linear(84, num_classes)
        self.hook_names: list[str] = ["conv1", "relu1", "pool1", "conv2", "relu2", "pool2",
                                      "conv3", "relu3", "fc1", "relu4", "fc2"]
        self.stages: list[list[str]] = []  # no residual stages

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x)))
        x = self.relu3(self.conv3(x))
        return self.fc2(self.relu4(self.fc1(torch.flatten(x, 1))))


def lenet5(*, in_channels: int, num_classes: int, image_size: int) -> LeNet5:
    """Builder for the registry (LeNet-5 has no residual branch, hence no attention)."""
    return LeNet5(positive_int(in_channels, "in_channels", "lenet5"),
                  positive_int(num_classes, "num_classes", "lenet5"),
                  positive_int(image_size, "image_size", "lenet5"))
