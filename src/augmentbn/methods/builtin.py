"""The methods augmentbn ships: BatchNorm, NABN, IEBN, GroupNorm and InstanceNorm."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .checks import NOISE_TYPES, RUNNING_STATS, check_noise_args, default_theta
from .registry import register_method
from .spec import MethodSpec, Param

__all__: list[str] = []


def _per_dims(module: str, stem: str) -> tuple[str, str, str]:
    return tuple(f"{module}:{stem}{d}d" for d in (1, 2, 3))  # type: ignore[return-value]


def _check_noise(_: Any, kwargs: Mapping[str, Any]) -> None:
    check_noise_args(kwargs["theta"], kwargs["noise"], kwargs["noise_std"], "nabn")


def _check_num_groups(value: Any, _: Mapping[str, Any]) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"gn: num_groups must be a positive integer or None, got {value!r}")


register_method(
    MethodSpec(
        name="bn",
        title="BatchNorm",
        aliases=("batchnorm", "batch"),
        layers={
            "torch": _per_dims("torch.nn", "BatchNorm"),
            "torch-sync": _per_dims("augmentbn.layers.sync", "SyncBatchNorm"),
            "jittor": _per_dims("augmentbn.jittor.layers", "BatchNorm"),
        },
        batchnorm_state=True,
        batch_statistics=True,
    )
)

register_method(
    MethodSpec(
        name="nabn",
        title="AugmentBN: noise-assisted BatchNorm (Zhu, Yu & Hu 2024)",
        aliases=("augmentbn", "augment", "gaubatchnorm"),
        layers={
            "torch": _per_dims("augmentbn.layers.augment", "AugmentBatchNorm"),
            "torch-sync": _per_dims("augmentbn.layers.sync", "SyncAugmentBatchNorm"),
            "jittor": _per_dims("augmentbn.jittor.layers", "AugmentBatchNorm"),
        },
        params=(
            Param(
                "noise",
                str,
                "gaussian_clip",
                "noise of the mean shift: gaussian_clip (the paper's code), gaussian_reject "
                "(the Jittor seed), uniform (the paper's ablation and U-Net)",
                choices=NOISE_TYPES,
            ),
            Param(
                "theta",
                float,
                lambda kwargs: default_theta(kwargs["noise"]),
                "bound of the mean shift (default 0.2; 0.3 for uniform)",
                check=_check_noise,
            ),
            Param("noise_std", float, 1.0, "std of the Gaussian before clipping or rejection"),
            Param(
                "running_stats",
                str,
                "perturbed",
                "running averages of the shifted statistics (perturbed, as the references) or "
                "exactly nn.BatchNorm's (clean)",
                choices=RUNNING_STATS,
            ),
        ),
        paper_roles=frozenset({"stem", "last", "shortcut", "conv"}),
        batchnorm_state=True,
        batch_statistics=True,
        needs_generator=True,
    )
)

register_method(
    MethodSpec(
        name="iebn",
        title="IEBN: instance enhancement BatchNorm (Liang et al. 2020)",
        aliases=("ban", "iebatchnorm"),
        layers={
            "torch": _per_dims("augmentbn.layers.instance_enhance", "IEBatchNorm"),
            "torch-sync": _per_dims("augmentbn.layers.sync", "SyncIEBatchNorm"),
            "jittor": _per_dims("augmentbn.jittor.layers", "IEBatchNorm"),
        },
        paper_roles=frozenset({"stem", "inner", "last", "conv"}),
        batchnorm_state=True,
        batch_statistics=True,
    )
)

register_method(
    MethodSpec(
        name="gn",
        title="GroupNorm (Wu & He 2018)",
        aliases=("groupnorm", "group"),
        layers={"torch": ("augmentbn.layers.factory:group_norm",) * 3},
        params=(
            Param(
                "num_groups",
                int,
                None,
                "groups (default gcd(channels, 32))",
                check=_check_num_groups,
            ),
        ),
    )
)

register_method(
    MethodSpec(
        name="in",
        title="InstanceNorm (affine)",
        aliases=("instancenorm", "instance"),
        layers={"torch": _per_dims("torch.nn", "InstanceNorm")},
        layer_defaults={"affine": True},
    )
)
