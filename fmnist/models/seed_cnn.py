"""The article's `Network`: two 5x5 convolutions with max-pooling, then a 3-layer MLP."""

import torch
import torch.nn.functional as F
from torch import nn


class SeedCNN(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels=1, out_channels=6, kernel_size=5)  # 28 -> 24 -> pool 12
        self.conv2 = nn.Conv2d(in_channels=6, out_channels=12, kernel_size=5)  # 12 -> 8 -> pool 4
        self.fc1 = nn.Linear(in_features=12 * 4 * 4, out_features=120)
        self.fc2 = nn.Linear(in_features=120, out_features=60)
        self.out = nn.Linear(in_features=60, out_features=num_classes)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        # The article's conv -> relu -> max-pool, computed as conv -> max-pool -> relu: the two
        # commute exactly (values and gradients), and ReLU on the pooled map costs 4x less.
        t = F.relu(F.max_pool2d(self.conv1(t), kernel_size=2, stride=2))
        t = F.relu(F.max_pool2d(self.conv2(t), kernel_size=2, stride=2))
        t = F.relu(self.fc1(t.flatten(1)))  # 12 x 4 x 4
        t = F.relu(self.fc2(t))
        return self.out(t)  # logits: cross_entropy applies the softmax
