import pytest
import torch

from fmnist.models import count_parameters
from fmnist.models.air_cnn import AirCNN
from fmnist.models.bn_cnn import BNCNN
from fmnist.models.resnet import ResNet
from fmnist.models.seed_cnn import SeedCNN


def test_seed_cnn_is_the_articles_network():
    net = SeedCNN()
    shapes = {name: tuple(p.shape) for name, p in net.named_parameters()}
    assert shapes == {
        "conv1.weight": (6, 1, 5, 5),
        "conv1.bias": (6,),
        "conv2.weight": (12, 6, 5, 5),
        "conv2.bias": (12,),
        "fc1.weight": (120, 192),
        "fc1.bias": (120,),
        "fc2.weight": (60, 120),
        "fc2.bias": (60,),
        "out.weight": (10, 60),
        "out.bias": (10,),
    }
    assert count_parameters(net) == 156 + 1812 + 23160 + 7260 + 610 == 32998


@pytest.mark.parametrize(
    ("model", "low", "high"),
    [
        (SeedCNN(), 32998, 32998),
        (BNCNN(), 300_000, 500_000),
        (ResNet(), 500_000, 1_500_000),
        (AirCNN(), 100_000, 500_000),
    ],
    ids=["seed_cnn", "bn_cnn", "resnet", "air_cnn"],
)
def test_models_shape_backward_and_size(model, low, high):
    x = torch.rand(4, 1, 28, 28)
    out = model(x)
    assert out.shape == (4, 10)
    out.sum().backward()
    trained = [p for p in model.parameters() if p.requires_grad]  # air_cnn's whitening is fixed
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in trained)
    assert low <= count_parameters(model) <= high


def test_seed_cnn_equals_the_articles_layer_order():
    """relu then pool (the article) and pool then relu (ours, faster) agree, gradients included."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    net = SeedCNN()
    x = torch.randn(16, 1, 28, 28)

    def article_forward(t):
        t = F.max_pool2d(F.relu(net.conv1(t)), kernel_size=2, stride=2)
        t = F.max_pool2d(F.relu(net.conv2(t)), kernel_size=2, stride=2)
        t = F.relu(net.fc1(t.reshape(-1, 12 * 4 * 4)))
        return net.out(F.relu(net.fc2(t)))

    grads = []
    for forward in (article_forward, net):
        net.zero_grad()
        out = forward(x)
        out.square().sum().backward()
        grads.append([p.grad.clone() for p in net.parameters()])
        grads[-1].append(out.detach())
    for a, b in zip(*grads, strict=True):
        assert torch.equal(a, b)
