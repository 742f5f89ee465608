"""Weight initialization shared by the models, as in both references.

Convolutions get He-normal weights, ``N(0, 2 / fan_out)`` with ``fan_out = C_out · prod(k)``
(``kaiming_normal_(mode="fan_out", nonlinearity="relu")``, the rule of torchvision's ResNet and of
the IEBN reference's CIFAR ResNet), and zero biases. Normalization layers are left to their own
``reset_parameters`` (BatchNorm: weight 1, bias 0; IEBN: ``weight_readjust`` 0 and
``bias_readjust`` -1), and linear layers keep PyTorch's default.
"""

from __future__ import annotations

from torch import nn

__all__ = ["init_conv_weights"]

_CONV_TYPES = (
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
)


def init_conv_weights(module: nn.Module) -> nn.Module:
    """He-normal (fan-out, ReLU) init of every convolution in ``module``; biases to zero."""
    for m in module.modules():
        if isinstance(m, _CONV_TYPES):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return module
