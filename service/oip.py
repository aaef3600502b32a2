"""The Open Inference Protocol's wire format (KServe v2 REST, as Triton implements it), both directions.

Only translation lives here; the classification itself is the shared `Pipeline`. What a model looks like
over the protocol, for every model in the store:

- one input, ``image``: BYTES, shape ``[N]`` or ``[N, 1]``, each element one encoded image file (JPEG, PNG,
  ...); the service decodes and cuts it exactly as ``POST /predict`` does;
- one output, ``probabilities``: FP32 ``[N, classes]``, the softmax averaged over the crop scheme's patches;
  with Triton's classification extension (``"parameters": {"classification": K}`` on the requested output)
  it is instead BYTES ``[N, K]`` of ``"probability:index:label"`` strings, highest first;
- for a version with a features output (its penultimate layer, metadata ``onnx.features``), a second output,
  ``features``: FP32 ``[N, D]``, averaged over the crop scheme's patches like the probabilities, or with
  ``"parameters": {"patches": true}`` on the requested output FP32 ``[N, P, D]``, each patch's own (P = 10 or 1).
  It is sent only when asked for (``outputs`` naming it).

The gallery search (``POST /v2/models/{m}/search``, the paper's Fig. 4) takes the same request body — the images
as the ``image`` input — with the parameter ``k`` (neighbours per image, default `DEFAULT_NEIGHBOURS`), and answers in
the same response format with the outputs `SEARCH_OUTPUTS` (default: all but ``thumbnails``): ``neighbours`` INT64
``[N, k]`` (gallery positions, nearest first), ``distances`` FP32 ``[N, k]`` (Euclidean, between the averaged
features), ``labels``, ``predicted`` and ``files`` BYTES ``[N, k]`` (each gallery image's class folder, the model's
top-1 for it, its path in the indexed folder), ``thumbnails`` BYTES ``[N, k]`` (96×96 JPEG files).

Request body: JSON, where a BYTES element is a base64 string (KServe's own examples send images so), or the
binary tensor data extension: the JSON header is the first ``Inference-Header-Content-Length`` bytes and each
input with ``"parameters": {"binary_data_size": B}`` takes the next B bytes, every element a 4-byte
little-endian length followed by its bytes (tritonclient's encoding). Request parameter ``crops``: ``ten``
or ``center`` (default: the model's own scheme). Outputs are JSON unless an output asks for
``binary_data`` (or the request for ``binary_data_output``); then the response uses the same extension.

Every malformed request is a `BadRequest` (400) naming the field: wrong datatype, wrong shape, bad base64, a
binary size that does not match, an unknown input or output.
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from alexnet_store.vocabulary import CROP_SCHEMES
from service.errors import BadRequest, PayloadTooLarge

HEADER_LENGTH = "Inference-Header-Content-Length"
PROTOCOL_INPUT = "image"
PROTOCOL_OUTPUT = "probabilities"
PROTOCOL_FEATURES = "features"
SEARCH_OUTPUTS = ("neighbours", "distances", "labels", "predicted", "files", "thumbnails")
SEARCH_DEFAULT_OUTPUTS = SEARCH_OUTPUTS[:-1]
DEFAULT_NEIGHBOURS = 5
PROTOCOL_INPUT_DATATYPE = "BYTES"
PROTOCOL_OUTPUT_DATATYPE = "FP32"
PLATFORM = "onnxruntime_onnx"
EXTENSIONS = ("binary_tensor_data", "classification", "model_repository", "model_configuration", "parameters")
_LENGTH = struct.Struct("<I")


class Ranked(Protocol):
    """One ranked class (service.pipeline.Prediction)."""

    index: int
    label: str
    probability: float


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    binary: bool
    classification: int = 0  # top-K strings instead of probabilities when > 0
    patches: bool = False  # features: each patch's [N, P, D] instead of their mean [N, D]


@dataclass(frozen=True)
class InferRequest:
    id: str | None
    images: list[bytes]
    crops: str | None
    outputs: list[RequestedOutput]
    k: int = 0  # a search's neighbours per image

    @property
    def features(self) -> bool:
        return any(o.name == PROTOCOL_FEATURES for o in self.outputs)

    @property
    def classification(self) -> tuple[int, str]:
        """The most classes any output asks to rank (0: none), and that output's field, for the dataplane's check."""
        j = max(range(len(self.outputs)), key=lambda i: self.outputs[i].classification, default=None)
        if j is None or not self.outputs[j].classification:
            return 0, ""
        return self.outputs[j].classification, f"outputs[{j}].parameters.classification"


def _field(value: Any, where: str, kind: type | tuple[type, ...], what: str) -> Any:
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise BadRequest(f"{where}: expected {what}, got {json.dumps(value)[:80]}", reason="bad_request")
    return value


def _bool(value: Any, where: str) -> bool:
    return _field(value, where, bool, "true or false")


def _split_elements(raw: bytes, count: int, where: str) -> list[bytes]:
    """Triton's BYTES serialisation: each element is a 4-byte little-endian length and that many bytes."""
    elements, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise BadRequest(f"{where}: binary data ends inside the length of element {len(elements)}",
                             reason="bad_binary")
        (length,) = _LENGTH.unpack_from(raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise BadRequest(f"{where}: element {len(elements)} says {length:,} bytes but only "
                             f"{len(raw) - offset:,} are left in its binary_data_size", reason="bad_binary")
        elements.append(raw[offset:offset + length])
        offset += length
    if len(elements) != count:
        raise BadRequest(f"{where}: binary data holds {len(elements)} elements but the shape says {count}",
                         reason="bad_shape")
    return elements


def _flatten(data: Any, where: str) -> list[Any]:
    if not isinstance(data, list):
        raise BadRequest(f"{where}: expected a list of base64 strings", reason="bad_request")
    out: list[Any] = []
    for item in data:
        out.extend(_flatten(item, where) if isinstance(item, list) else [item])
    return out


def parse_infer_request(body: bytes, header_length: str | None, *, max_images: int, max_image_bytes: int,
                        search: bool = False) -> InferRequest:
    """An infer request's body → the images and what to answer; BadRequest/PayloadTooLarge naming the field. With
    `search`, a search request's: the same body, the parameter ``k`` and the search's outputs."""
    binary = b""
    if header_length is not None:
        if not header_length.strip().isdigit() or not 0 < int(header_length) <= len(body):
            raise BadRequest(f"{HEADER_LENGTH}: {header_length!r} is not a length within the body of "
                             f"{len(body):,} bytes", reason="bad_binary")
        body, binary = body[:int(header_length)], body[int(header_length):]
    try:
        request = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"the request is not valid JSON: {exc}", reason="bad_json") from exc
    _field(request, "request", dict, "a JSON object")
    request_id = request.get("id")
    if request_id is not None:
        _field(request_id, "id", str, "a string")
    parameters = _field(request.get("parameters", {}), "parameters", dict, "an object")
    crops = parameters.get("crops")
    if crops is not None and crops not in CROP_SCHEMES:
        raise BadRequest(f"parameters.crops: expected one of {sorted(CROP_SCHEMES)}, got {json.dumps(crops)}",
                         reason="bad_parameter")
    binary_default = _bool(parameters.get("binary_data_output", False), "parameters.binary_data_output")

    inputs = _field(request.get("inputs"), "inputs", list, "a list with one input")
    if len(inputs) != 1:
        raise BadRequest(f"inputs: expected one input ({PROTOCOL_INPUT!r}), got {len(inputs)}", reason="bad_request")
    where = "inputs[0]"
    tensor = _field(inputs[0], where, dict, "an object")
    name = tensor.get("name")
    if name != PROTOCOL_INPUT:
        raise BadRequest(f"{where}.name: unknown input {json.dumps(name)} (this model's input is {PROTOCOL_INPUT!r})",
                         reason="unknown_input")
    if tensor.get("datatype") != PROTOCOL_INPUT_DATATYPE:
        raise BadRequest(f"{where}.datatype: expected {PROTOCOL_INPUT_DATATYPE} (encoded image files), got "
                         f"{json.dumps(tensor.get('datatype'))}", reason="bad_datatype")
    shape = _field(tensor.get("shape"), f"{where}.shape", list, "[N] or [N, 1]")
    if not (len(shape) in (1, 2) and all(isinstance(d, int) and not isinstance(d, bool) for d in shape)
            and shape[0] >= 1 and (len(shape) == 1 or shape[1] == 1)):
        raise BadRequest(f"{where}.shape: expected [N] or [N, 1] with N >= 1, got {json.dumps(shape)}",
                         reason="bad_shape")
    count = shape[0]
    if count > max_images:
        raise PayloadTooLarge(f"{where}.shape: {count} images, more than the limit of {max_images} per request",
                              reason="too_many_files")
    input_parameters = _field(tensor.get("parameters", {}), f"{where}.parameters", dict, "an object")
    if "binary_data_size" in input_parameters:
        size = _field(input_parameters["binary_data_size"], f"{where}.parameters.binary_data_size", int,
                      "a byte count")
        if "data" in tensor:
            raise BadRequest(f"{where}: both 'data' and binary_data_size are given", reason="bad_request")
        if size < 0 or size > len(binary):
            raise BadRequest(f"{where}.parameters.binary_data_size: {size:,} bytes, but the body has "
                             f"{len(binary):,} after its JSON header", reason="bad_binary")
        images = _split_elements(binary[:size], count, where)
        binary = binary[size:]
    else:
        data = _flatten(tensor.get("data"), f"{where}.data")
        if len(data) != count:
            raise BadRequest(f"{where}: the shape {json.dumps(shape)} holds {count} elements but data has "
                             f"{len(data)}", reason="bad_shape")
        images = []
        for i, item in enumerate(data):
            if not isinstance(item, str):
                raise BadRequest(f"{where}.data[{i}]: expected a base64 string, got {type(item).__name__}",
                                 reason="bad_base64")
            try:
                images.append(base64.b64decode(item, validate=True))
            except (binascii.Error, ValueError) as exc:
                raise BadRequest(f"{where}.data[{i}]: not valid base64 ({exc})", reason="bad_base64") from exc
    if binary:
        raise BadRequest(f"{len(binary):,} bytes after the inputs' binary data belong to no input",
                         reason="bad_binary")
    for i, image in enumerate(images):
        if len(image) > max_image_bytes:
            raise PayloadTooLarge(f"{where} element {i} is larger than the limit of {max_image_bytes:,} bytes",
                                  reason="too_large")

    if search:
        k = _field(parameters.get("k", DEFAULT_NEIGHBOURS), "parameters.k", int, "a count of neighbours")
        if k < 1:  # the upper bound, the gallery's size, is the dataplane's rule
            raise BadRequest(f"parameters.k: expected a count of neighbours >= 1, got {k}", reason="bad_parameter")
        names, default = SEARCH_OUTPUTS, [{"name": n} for n in SEARCH_DEFAULT_OUTPUTS]
    else:
        k, names, default = 0, (PROTOCOL_OUTPUT, PROTOCOL_FEATURES), [{"name": PROTOCOL_OUTPUT}]
    outputs = []
    for j, spec in enumerate(_field(request.get("outputs", default), "outputs", list, "a list")):
        at = f"outputs[{j}]"
        _field(spec, at, dict, "an object")
        name = spec.get("name")
        if name not in names:
            raise BadRequest(f"{at}.name: unknown output {json.dumps(name)} (the outputs are "
                             f"{', '.join(map(repr, names))})", reason="unknown_output")
        params = _field(spec.get("parameters", {}), f"{at}.parameters", dict, "an object")
        classes = params.get("classification", 0)
        _field(classes, f"{at}.parameters.classification", int, "a class count")
        if classes < 0:  # the upper bound, the model's classes, is the dataplane's rule for every transport
            raise BadRequest(f"{at}.parameters.classification: expected a class count >= 1, got {classes}",
                             reason="bad_parameter")
        if classes and name != PROTOCOL_OUTPUT:
            raise BadRequest(f"{at}.parameters.classification: only the {PROTOCOL_OUTPUT!r} output ranks classes",
                             reason="bad_parameter")
        patches = _bool(params.get("patches", False), f"{at}.parameters.patches")
        if patches and name != PROTOCOL_FEATURES:
            raise BadRequest(f"{at}.parameters.patches: only the {PROTOCOL_FEATURES!r} output has one per patch",
                             reason="bad_parameter")
        binary_out = _bool(params.get("binary_data", binary_default), f"{at}.parameters.binary_data")
        outputs.append(RequestedOutput(name, binary_out, classes, patches))
    return InferRequest(request_id, images, crops, outputs, k)


def classification_strings(top: Sequence[Sequence[Ranked]], k: int) -> np.ndarray:
    """Triton's classification extension: each image's top-k (the pipeline's ranking) as
    ``"probability:index:label"``, highest first."""
    rows = [[f"{p.probability:f}:{p.index}:{p.label}" for p in ranked[:k]] for ranked in top]
    return np.array(rows, dtype=object).reshape(len(rows), k)


def _serialize_bytes(values: np.ndarray) -> bytes:
    parts = []
    for value in values.reshape(-1):
        data = value.encode() if isinstance(value, str) else bytes(value)
        parts += [_LENGTH.pack(len(data)), data]
    return b"".join(parts)


_WIRE = {"FP32": "<f4", "INT64": "<i8"}


def _data(value: Any) -> Any:
    return base64.b64encode(value).decode("ascii") if isinstance(value, bytes) else value


def encode_tensors(request: InferRequest, tensors: Sequence[tuple[RequestedOutput, str, np.ndarray]], *,
                   model_name: str, model_version: int, parameters: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
    """(requested output, datatype, tensor) → the response body and headers: JSON, or a JSON header plus binary
    tensors when any output asks for them. In JSON a BYTES element that is not text (a thumbnail) is base64."""
    outputs, blobs = [], []
    for spec, datatype, tensor in tensors:
        out: dict[str, Any] = {"name": spec.name, "datatype": datatype, "shape": list(tensor.shape)}
        if spec.binary:
            blob = (_serialize_bytes(tensor) if datatype == "BYTES" else
                    np.ascontiguousarray(tensor, _WIRE[datatype]).tobytes())
            out["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            data = tensor.reshape(-1).tolist()
            out["data"] = [_data(v) for v in data] if datatype == "BYTES" else data
        outputs.append(out)
    header = {"model_name": model_name, "model_version": str(model_version), "parameters": parameters,
              "outputs": outputs}
    if request.id is not None:
        header = {"id": request.id, **header}
    text = json.dumps(header, separators=(",", ":")).encode()
    if not blobs:
        return text, {"content-type": "application/json"}
    return text + b"".join(blobs), {"content-type": "application/octet-stream", HEADER_LENGTH: str(len(text))}


def encode_infer_response(request: InferRequest, *, model_name: str, model_version: int, probabilities: np.ndarray,
                          top: Sequence[Sequence[Ranked]], parameters: dict[str, Any],
                          features: np.ndarray | None = None, patch_features: np.ndarray | None = None
                          ) -> tuple[bytes, dict[str, str]]:
    """An infer answer: each requested output (probabilities, classification strings, features [N, D] or per patch
    [N, P, D]) in its wire format."""
    tensors = []
    for spec in request.outputs:
        if spec.name == PROTOCOL_FEATURES:
            tensor = patch_features if spec.patches else features
            assert tensor is not None, "the dataplane refuses features for a version without them"
            tensors.append((spec, "FP32", tensor.astype(np.float32, copy=False)))
        elif spec.classification:
            tensors.append((spec, "BYTES", classification_strings(top, spec.classification)))
        else:
            tensors.append((spec, PROTOCOL_OUTPUT_DATATYPE, probabilities.astype(np.float32, copy=False)))
    return encode_tensors(request, tensors, model_name=model_name, model_version=model_version, parameters=parameters)
