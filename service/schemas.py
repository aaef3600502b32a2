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


class ServedRef(_Base):
    name: str = Field(examples=["alexnet"])
    version: int = Field(examples=[2])
    provider: str = Field(examples=["CPUExecutionProvider"])


class Ready(_Base):
    status: Literal["ready"] = "ready"
    models: list[ServedRef] = Field(description="each served model's default version (its newest loaded one)")


RepositoryState = Literal["LOADING", "READY", "UNLOADING", "UNAVAILABLE"]


class ServedModel(_Base):
    name: str
    version: int
    state: RepositoryState = Field(description="READY (serving), LOADING, UNLOADING (finishing its requests), "
                                               "UNAVAILABLE (with the reason)")
    reason: str = Field("", description="why a version is not READY (load error, 'unloaded', the version policy)")
    ready: bool
    default: bool = Field(False, description="the version requests get when they name none (the newest loaded)")
    provider: str | None = Field(None, description="the execution provider the session ACTUALLY runs on "
                                                   "(null unless loaded)")
    requested_providers: list[str]
    available_providers: list[str] = Field(description="what this onnxruntime build lists (not all may work)")
    num_classes: int | None = None
    path: str = Field(description="the version's folder, relative to the model store", examples=["alexnet/2"])
    load_seconds: float | None = Field(None, description="parse + sha256 + session + warm-up, when it was loaded")
    memory_bytes: int | None = Field(None, description="how much the process's resident memory grew when this "
                                                       "version was loaded")
    metadata: dict[str, Any] | None = Field(None, description="the loaded version's metadata.json: labels, "
                                                              "preprocessing, onnx, parity, training")


class ModelList(_Base):
    models: list[ServedModel]


# -- the Open Inference Protocol (KServe v2 / Triton) ------------------------------------------------------------
class V2Error(_Base):
    error: str = Field(examples=["inputs[0].datatype: expected BYTES (encoded image files), got \"FP32\""])


class ServerMetadata(_Base):
    name: str
    version: str
    extensions: list[str]


class V2Live(_Base):
    live: bool = True


class V2Ready(_Base):
    ready: bool = True


class ModelReady(_Base):
    name: str
    ready: bool = True


class TensorMetadata(_Base):
    name: str
    datatype: str
    shape: list[int] = Field(description="-1 for a variable dimension (the batch)")


class V2ModelMetadata(_Base):
    name: str
    versions: list[str] = Field(description="the loaded versions (with /versions/{v}: that one)")
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class IndexEntry(_Base):
    name: str
    version: str
    state: RepositoryState
    reason: str = ""


class InferTensor(_Base):
    name: str
    datatype: str
    shape: list[int]
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class RequestedOutputSpec(_Base):
    name: str = Field(examples=["probabilities"])
    parameters: dict[str, Any] | None = Field(None, examples=[{"classification": 5, "binary_data": False}])


class InferRequestBody(_Base):
    id: str | None = None
    parameters: dict[str, Any] | None = Field(None, examples=[{"crops": "ten"}])
    inputs: list[InferTensor]
    outputs: list[RequestedOutputSpec] | None = None


class InferResponseBody(_Base):
    model_name: str
    model_version: str
    id: str | None = None
    parameters: dict[str, Any] | None = None
    outputs: list[InferTensor]
