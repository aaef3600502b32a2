"""The project's vocabulary: each name and constant both sides use, defined once (pure standard library).

Model facts travel in each version's metadata.json (alexnet_store/metadata.py); what is here is what the format
itself and the tools around it agree on: the crop schemes and their patch counts, the image files a folder of
images is made of, and the paper's (and torchvision's) ImageNet sizes and channel statistics, which are the
defaults a new export writes into its metadata.
"""

from __future__ import annotations

from typing import Literal, get_args

# -- crop schemes ---------------------------------------------------------------------------------------------
CropScheme = Literal["ten", "center"]
CROP_SCHEMES: tuple[str, ...] = get_args(CropScheme)
# torchvision's FiveCrop order; TenCrop adds the same five cuts of the mirrored square.
FIVE_CROP = ("top-left", "top-right", "bottom-left", "bottom-right", "center")
PATCHES_PER_SCHEME: dict[str, int] = {"ten": 2 * len(FIVE_CROP), "center": 1}

# -- the paper's evaluation geometry and ImageNet's channel statistics (torchvision's) -------------------------
RESIZE_SIZE = 256  # the shorter side, then the central square
CROP_SIZE = 224  # the patches the network sees
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# -- how pixels reach a network (its metadata's preprocessing.channel_order and pixel_range) ---------------------
# The networks trained here take RGB in [0, 1]; imported ones may take Caffe's BGR in [0, 255] (the ONNX zoo's BVLC
# AlexNet). mean/std are in the network's channel order and pixel units.
ChannelOrder = Literal["RGB", "BGR"]
PixelRange = Literal["0-1", "0-255"]
PIXEL_MAX: dict[str, float] = {"0-1": 1.0, "0-255": 255.0}  # what a white pixel is before mean/std

# -- image files ------------------------------------------------------------------------------------------------
# What a folder of images (validation sets, calibration sets, galleries, load-generator inputs) is made of: the
# suffixes of the formats the service decodes (service/preprocess.py ALLOWED_FORMATS).
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"})


def is_image_file(name: str) -> bool:
    """A visible file whose suffix is one of `IMAGE_SUFFIXES` (case-insensitive)."""
    dot = name.rfind(".")
    return not name.startswith(".") and dot > 0 and name[dot:].lower() in IMAGE_SUFFIXES


def placeholder_label_names(count: int) -> list[str]:
    """Class names for a model that was given none: ``class_0``, ``class_1``, ..."""
    return [f"class_{i}" for i in range(count)]
