"""The model store: the contract between `training/` (which writes models) and `service/` (which reads them).

A store is a directory laid out as ``<root>/<name>/<version>/{model.onnx, metadata.json}``. Everything a
reader needs to use a model (labels, sizes, mean/std, crop scheme) is in ``metadata.json``, so no
constant is shared between the two packages except through this module. Pure standard library: both
sides import it without pulling in the other's stack.
"""

from alexnet_store.metadata import (
    FORMAT_VERSION,
    Features,
    Label,
    MetadataError,
    ModelMetadata,
    OnnxInfo,
    Parity,
    Preprocessing,
    Source,
    TrainingSummary,
)
from alexnet_store.store import ModelNotFoundError, ModelStore, ModelVersion, StoreError

__all__ = [
    "FORMAT_VERSION",
    "Features",
    "Label",
    "MetadataError",
    "ModelMetadata",
    "ModelNotFoundError",
    "ModelStore",
    "ModelVersion",
    "OnnxInfo",
    "Parity",
    "Preprocessing",
    "Source",
    "StoreError",
    "TrainingSummary",
]
