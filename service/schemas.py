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
    probability: float = Field(description="softmax probability averaged over the patches (in details.patches: "
                                           "that patch's own)", examples=[0.91])


class ImageInfo(_Base):
    format: str = Field(examples=["JPEG"])
    width: int = Field(description="as stored in the file, before EXIF rotation", examples=[500])
    height: int = Field(examples=[375])


class PatchResult(_Base):
    name: str = Field(description="the region of the square it shows: top-left, top-right, bottom-left, "
                                  "bottom-right or center, with -flipped for its mirror image",
                      examples=["top-right-flipped"])
    box: list[int] = Field(description="[left, top, right, bottom] of that region in the square (right and bottom "
                                       "exclusive); a flipped patch shows it mirrored", examples=[[32, 0, 256, 224]])
    flipped: bool = Field(description="the patch is the region mirrored left to right", examples=[True])
    predictions: list[Prediction] = Field(
        description="this patch's own top-k: its softmax, from the same model run the averaged predictions come "
                    "from (their mean over the patches is the average), highest first")
    features: list[float] | None = Field(None, description="only with features=true: this patch's own features "
                                                           "(the version's penultimate layer), from the same run")


class PatchDetails(_Base):
    """What `details=patches` adds per image: the patches the model ran, where they lie, what each one saw."""

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "square_size": 256,
        "square_jpeg": "data:image/jpeg;base64,/9j/4AAQSkZJRgABAQAAAQABAAD...",
        "patches": [
            {"name": "top-left", "box": [0, 0, 224, 224], "flipped": False,
             "predictions": [{"index": 281, "label": "tabby", "id": "n02123045", "probability": 0.88}]},
            {"name": "top-right-flipped", "box": [32, 0, 256, 224], "flipped": True,
             "predictions": [{"index": 285, "label": "Egyptian cat", "id": "n02124075", "probability": 0.52}]},
        ]}]})

    square_size: int = Field(description="side of the square the patches are cut from (the model's resize size): "
                                         "the frame of every box", examples=[256])
    square_jpeg: str | None = Field(None, description="that square as a JPEG data URL (only with square=true)",
                                    examples=["data:image/jpeg;base64,/9j/4AAQSkZJRgABAQAAAQABAAD..."])
    patches: list[PatchResult] = Field(description="in the order the model ran them (torchvision's TenCrop "
                                                   "order): 10 with crops=ten, 1 with crops=center")


class Neighbour(_Base):
    """One gallery image near the uploaded one (the paper's Fig. 4), from `neighbours=k`."""

    position: int = Field(description="its row in the gallery generation searched", examples=[17])
    file: str = Field(description="its path in the indexed folder", examples=["n02123045/cat_0017.jpg"])
    label: str = Field(description="its class folder's name (\"\" when it was at the folder's top level)",
                       examples=["n02123045"])
    predicted: str = Field(description="the model's top-1 class for it when it was indexed", examples=["tabby"])
    distance: float = Field(description="Euclidean distance between its features and the upload's (both averaged "
                                        "over the crop scheme's patches)", examples=[41.7])
    thumbnail: str | None = Field(None, description="its 96×96 JPEG thumbnail as a data URL (when the gallery "
                                                    "keeps thumbnails)")


class GalleryRef(_Base):
    generation: int = Field(description="the gallery generation searched (a new one is used without a restart)",
                            examples=[3])
    size: int = Field(description="images in it", examples=[1000])
    search: Literal["flat", "hnsw"] = Field(description="flat: exact search; hnsw: the approximate index of a "
                                                        "large gallery", examples=["flat"])


class ImageResult(_Base):
    filename: str = Field(examples=["cat.jpg"])
    predictions: list[Prediction] = Field(description="top-k classes, highest probability first")
    image: ImageInfo
    preprocess_ms: float = Field(description="decode + resize + crop of this image", examples=[6.1])
    details: PatchDetails | None = Field(None, description="only with details=patches: each patch's own top-k "
                                                           "and where it lies")
    features: list[float] | None = Field(None, description="only with features=true: the version's penultimate "
                                                           "layer (AlexNet's fc7 after ReLU, 4096 values), averaged "
                                                           "over the crop scheme's patches")
    neighbours: list[Neighbour] | None = Field(None, description="only with neighbours=k: the k nearest gallery "
                                                                 "images by Euclidean distance, nearest first")


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
    gallery: GalleryRef | None = Field(None, description="only with neighbours=k: the gallery searched")
    timing: Timing


class ErrorBody(_Base):
    detail: str = Field(description="what was wrong, naming the file where one file was the problem")
    filename: str | None = Field(None, description="the offending file, when there is one")
    reason: str | None = Field(None, description="short machine-readable kind of error")


class ValidationIssue(_Base):
    loc: list[str | int] = Field(description="where: the request part, then the field", examples=[["query", "top_k"]])
    msg: str
    type: str
    input: str | int | float | bool | None = None


class ValidationErrorBody(ErrorBody):
    """422 on the service's own routes: the one-line `detail`, and for a request that does not match the document
    (a parameter out of range, a body of the wrong shape) each issue under `errors`."""

    errors: list[ValidationIssue] | None = Field(None, description="one item per problem, as the validator saw it")


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
    parameters: dict[str, Any] | None = Field(
        None, description="the served version's preprocessing and source, as scalars (the protocol's optional "
                          "parameters)", examples=[{"resize_size": 256, "crop_size": 224, "channel_order": "RGB",
                                                    "source": "torchvision", "source_arch": "alexnet"}])


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


class TrafficRule(_Base):
    """A model's traffic rule, as ``POST /v2/repository/models/{name}/traffic`` takes it (service/traffic.py)."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"split": {"3": 90, "4": 10}, "shadow": {"5": 25}}]})

    split: dict[int, float] = Field(
        default_factory=dict, description="version → weight (relative, at least one above 0) for the requests that "
                                          "name no version; empty: every one to the default version")
    shadow: dict[int, float] = Field(
        default_factory=dict, description="version → percent (above 0, at most 100) of those requests that are also "
                                          "run on it, the answer discarded after its top-1 is compared")


class TrafficState(_Base):
    name: str = Field(examples=["alexnet"])
    split: dict[str, float] = Field(description="the split as set (version → weight)", examples=[{"3": 90, "4": 10}])
    shadow: dict[str, float] = Field(description="the shadows as set (version → percent)", examples=[{"5": 25}])
    effective: dict[str, float] = Field(
        description="the split over the versions loaded now, as fractions summing to 1; empty: the default version "
                    "answers", examples=[{"3": 0.9, "4": 0.1}])
    default: int | None = Field(description="the model's default version (its newest loaded one)", examples=[4])
    sticky_header: str | None = Field(
        description="the request header whose value picks the split's version (ALEXNET_TRAFFIC_STICKY_HEADER); "
                    "null: the request id", examples=["X-User-ID"])
