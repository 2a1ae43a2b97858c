"""Networks: GoogLeNet (Inception v1, Table 1 of the paper) and its torchvision-compatible variant."""
from detect.models.googlenet import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    GoogLeNet,
    GoogLeNetOutputs,
    LoadReport,
    build_model,
    googlenet_torchvision,
    load_model,
    load_pretrained,
)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "GoogLeNet",
    "GoogLeNetOutputs",
    "LoadReport",
    "build_model",
    "googlenet_torchvision",
    "load_model",
    "load_pretrained",
]
