"""list_datasets / build_dataset: names, argument checks, DatasetInfo."""

from __future__ import annotations

import pytest

from augmentbn.data import DatasetInfo, build_dataset, list_datasets


def test_list_holds_every_medmnist_2d_flag_and_is_sorted():
    from medmnist.info import INFO  # the installed package is the reference

    flags = {flag for flag in INFO if not flag.endswith("3d")}
    names = list_datasets()
    assert names == sorted(names)
    decathlon = {
        f"msd_{task}"
        for task in (
            "braintumour",
            "heart",
            "liver",
            "hippocampus",
            "prostate",
            "lung",
            "pancreas",
            "hepaticvessel",
            "spleen",
            "colon",
        )
    }
    others = {"digits", "cifar10", "cifar100", "imagefolder", "seg_demo"}
    assert set(names) == flags | others | decathlon


def test_unknown_name_lists_the_valid_names():
    with pytest.raises(ValueError, match="unknown dataset 'mnist'.*cifar10.*digits.*octmnist"):
        build_dataset("mnist")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"split": "valid"}, "split must be one of train, val, test"),
        ({"on_bad_image": "ignore"}, "on_bad_image must be one of raise, skip"),
        ({"in_chans": 2}, "in_chans must be 1, 3 or None"),
        ({"image_size": 0}, "image_size"),
    ],
)
def test_bad_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_dataset("digits", **kwargs)


def test_dataset_specific_options_are_checked():
    with pytest.raises(TypeError, match="val_fraction"):
        build_dataset("digits", val_fraction=0.2)


def test_dataset_info_checks_itself():
    with pytest.raises(ValueError, match="one per channel"):
        DatasetInfo("x", "classification", 2, 3, 8, (0.5,), (0.5,), ("a", "b"))
    with pytest.raises(ValueError, match="task"):
        DatasetInfo("x", "detection", 2, 1, 8, (0.5,), (0.5,), ("a", "b"))
    with pytest.raises(ValueError, match="class names"):
        DatasetInfo("x", "classification", 3, 1, 8, (0.5,), (0.5,), ("a", "b"))
