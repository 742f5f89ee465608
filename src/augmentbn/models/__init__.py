"""The networks of both papers, each taking any normalization by name.

``create_model("resnet20", norm="nabn", num_classes=10)`` builds a model by name;
``list_models()`` lists the names: CIFAR ResNets (``resnet20`` … ``resnet110``, ``resnet164``),
torchvision's ResNet-18/34/50, ResNeXt-29 8×64d for CIFAR and the U-Net (``unet``, ``unet3d``).
Other depths: :func:`resnet_cifar`, ``resnext_cifar.resnext_cifar``.
"""

from . import resnet, resnext_cifar, unet  # noqa: F401  (register the models)
from .registry import create_model, list_models, register_model
from .resnet_cifar import BasicBlock, Bottleneck, CifarResNet, resnet_cifar
from .unet import DoubleConv, UNet

__all__ = [
    "BasicBlock",
    "Bottleneck",
    "CifarResNet",
    "DoubleConv",
    "UNet",
    "create_model",
    "list_models",
    "register_model",
    "resnet_cifar",
]
