"""Response bodies, as pydantic models: they document the API in /docs and fix its shape.

The shape of `PredictResponse` (model.name/version, crops, results[].filename, results[].predictions[] with
index/label/probability, highest first) is a contract other tools rely on: add fields, never rename.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Base(BaseModel):
    model_config = ConfigDict(protected_namespaces=())


class ModelRef(_Base):
    name: str = Field(examples=["alexnet"])
    version: int = Field(examples=[1])


class Prediction(_Base):
    index: int = Field(description="class index (the model's output position)", examples=[281])
    label: str = Field(description="class name", examples=["tabby"])
    id: str = Field(description="class id, e.g. the ImageNet wnid", examples=["n02123045"])
    probability: float = Field(description="softmax probability averaged over the patches", examples=[0.91])


class ImageInfo(_Base):
    format: str = Field(examples=["JPEG"])
    width: int = Field(description="as stored in the file, before EXIF rotation", examples=[500])
    height: int = Field(examples=[375])


class ImageResult(_Base):
    filename: str = Field(examples=["cat.jpg"])
    predictions: list[Prediction] = Field(description="top-k classes, highest probability first")
    image: ImageInfo
    preprocess_ms: float = Field(description="decode + resize + crop of this image", examples=[6.1])


class Timing(_Base):
    read_ms: float = Field(description="receiving and parsing the upload")
    preprocess_ms: float = Field(description="decoding all images (in parallel threads)")
    inference_ms: float = Field(description="waiting for and running the model, one run for all images")
    total_ms: float


class PredictResponse(_Base):
    model: ModelRef
    crops: Literal["ten", "center"]
    top_k: int
    provider: str = Field(description="ONNX Runtime execution provider that ran the model",
                          examples=["CPUExecutionProvider"])
    results: list[ImageResult] = Field(description="one per uploaded file, in upload order")
    timing: Timing


class ErrorBody(_Base):
    detail: str = Field(description="what was wrong, naming the file where one file was the problem")
    filename: str | None = Field(None, description="the offending file, when there is one")
    reason: str | None = Field(None, description="short machine-readable kind of error")


class Live(_Base):
    status: Literal["alive"] = "alive"


class Ready(_Base):
    status: Literal["ready"] = "ready"
    model: ModelRef
    provider: str


class ServedModel(_Base):
    name: str
    version: int
    ready: bool
    state: Literal["loading", "ready", "failed"]
    provider: str | None = Field(description="the execution provider the session ACTUALLY runs on "
                                             "(null until loaded)")
    requested_providers: list[str]
    available_providers: list[str] = Field(description="what this onnxruntime build lists (not all may work)")
    num_classes: int
    path: str
    metadata: dict[str, Any] = Field(description="the version's metadata.json: labels, preprocessing, onnx, "
                                                 "parity, training")


class ModelList(_Base):
    models: list[ServedModel]
