"""The Open Inference Protocol (v2, REST) for classifier versions: the API of KServe,
Triton and MLServer, so their clients (``tritonclient.http``, the ``kserve`` SDK) work
against the gateway unchanged.

Spec: https://kserve.github.io/website/latest/modelserving/data_plane/v2_protocol/ and
Triton's binary tensor data extension (``Inference-Header-Content-Length``: the body is the
JSON inference header, then each binary tensor's raw little-endian bytes in order).

A classifier has one input, ``input`` (FP32, ``[-1, *input_shape]``), and two outputs:
``probabilities`` (FP32, ``[-1, num_classes]``) and ``predictions`` (INT64, ``[-1]``, the
most probable class). Any numeric input datatype is accepted and read as float32.
This module only translates; admission, routing and calling versions are the gateway's.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from models.signature import INPUT_NAME
from serve_apps._private.bodies import read_model
from serve_apps._private.http import ApiError, parse_json
from serve_apps._private.prediction import Prediction

INFER_HEADER = "Inference-Header-Content-Length"
PLATFORM = "onnxruntime_onnx"
PROBABILITIES, PREDICTIONS = "probabilities", "predictions"
EXTENSIONS = ["binary_tensor_data"]
# The protocol's numeric datatypes; BOOL and BYTES are no classifier input.
DATATYPES: dict[str, np.dtype] = {
    name: np.dtype(t).newbyteorder("<")
    for name, t in {
        "FP16": np.float16, "FP32": np.float32, "FP64": np.float64,
        "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
        "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
    }.items()
}  # fmt: skip


class InferInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(max_length=256)
    shape: list[int] = Field(min_length=1, max_length=8)
    datatype: str = Field(max_length=16)
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None  # flat or nested, row-major; absent when sent as binary


class RequestedOutput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(max_length=256)
    parameters: dict[str, Any] | None = None


class InferRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str | None = Field(None, max_length=256)
    # Not in the protocol's request, but KServe's SDK sends them; they must agree with the
    # path (checked by the gateway).
    model_name: str | None = Field(None, max_length=256)
    model_version: str | None = Field(None, max_length=32)
    parameters: dict[str, Any] | None = None
    inputs: list[InferInput] = Field(min_length=1, max_length=8)
    outputs: list[RequestedOutput] | None = Field(None, max_length=8)


def check_names(req: InferRequest, name: str, pinned: int | None) -> None:
    """The body's model_name/model_version (KServe's SDK sends them) agree with the path."""
    if req.model_name not in (None, name):
        raise _invalid(f"model_name {req.model_name!r} is not the path's model {name!r}.")
    if req.model_version not in (None, str(pinned)):
        where = f"is not the path's version {pinned}" if pinned else "needs a versioned path"
        raise _invalid(
            f"model_version {req.model_version!r} {where}: "
            f"/v2/models/{name}/versions/{req.model_version}/infer pins it."
        )


def _invalid(detail: str) -> ApiError:
    return ApiError(400, "invalid_input", detail)


def parse_version(version: str) -> int:
    """A version of the URL (a string in the protocol) as ours: a whole number from 1."""
    if not (version.isdigit() and 1 <= int(version) < 2**31):
        raise ApiError(422, "invalid_version", "Versions are whole numbers from 1.")
    return int(version)


def read_infer(
    body: bytes, header_length: str | None, input_shape: list[int], max_instances: int
) -> tuple[InferRequest, np.ndarray]:
    """The inference request and its input as float32 ``(n, *input_shape)``, or a 4xx
    naming the problem (400 for what the protocol calls a bad request, 422 for the schema)."""
    if header_length is None:
        header, binary = body, b""
    else:
        if not header_length.isdigit() or int(header_length) > len(body):
            raise _invalid(f"{INFER_HEADER} must be a byte count within the body.")
        header, binary = body[: int(header_length)], body[int(header_length) :]
    req = read_model(parse_json(header), InferRequest)
    if len(req.inputs) != 1 or req.inputs[0].name != INPUT_NAME:
        names = [i.name for i in req.inputs]
        raise _invalid(f"The model takes one input, {INPUT_NAME!r}; got {names}.")
    width = math.prod(input_shape)
    shape = req.inputs[0].shape
    if any(d < 0 for d in shape) or len(shape) < 2 or math.prod(shape[1:]) != width:
        raise _invalid(
            f"Input shape {shape} does not fit the model: send [n, {width}] "
            f"or [n, {', '.join(map(str, input_shape))}]."
        )
    if not 1 <= shape[0] <= max_instances:
        raise _invalid(f"{shape[0]} instances; from 1 to {max_instances} per request.")
    values = _tensor(req.inputs[0], binary)
    if not np.isfinite(values).all():
        raise _invalid("Input values must be finite numbers.")
    _check_outputs(req)
    return req, values.reshape(-1, *input_shape)


def _tensor(tensor: InferInput, binary: bytes) -> np.ndarray:
    """The input's values as float32, flat: from its binary bytes or its JSON ``data``."""
    dtype = DATATYPES.get(tensor.datatype)
    if dtype is None:
        raise _invalid(f"Datatype {tensor.datatype!r}: send one of {', '.join(DATATYPES)}.")
    count = math.prod(tensor.shape)  # the shape is checked: no dimension below 0
    size = (tensor.parameters or {}).get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or size != len(binary) or size != count * dtype.itemsize:
            raise _invalid(
                f"binary_data_size {size!r} must be the {len(binary)} bytes after the header "
                f"and shape {tensor.shape} of {tensor.datatype} ({count * dtype.itemsize} bytes)."
            )
        return np.frombuffer(binary, dtype=dtype).astype(np.float32)
    if binary:
        raise _invalid(f"{len(binary)} bytes after the header, but no binary_data_size.")
    if tensor.data is None:
        raise _invalid("The input has neither data nor binary_data_size.")
    try:
        values = np.asarray(tensor.data, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise _invalid("Input data must be numbers (a flat or a nested list).") from None
    if values.size != count:
        raise _invalid(f"{values.size} values for shape {tensor.shape} ({count} expected).")
    return values.astype(np.float32)


def _check_outputs(req: InferRequest) -> None:
    for out in req.outputs or []:
        if out.name not in (PROBABILITIES, PREDICTIONS):
            raise _invalid(f"No output {out.name!r}: ask for {PROBABILITIES!r} or {PREDICTIONS!r}.")


def infer_response(name: str, result: Prediction, req: InferRequest, rid: str) -> Response:
    """The answer in the protocol's shape: JSON, or JSON header + binary tensors for the
    outputs asked as binary (``binary_data``, or ``binary_data_output`` for all)."""
    proba = result.probabilities.astype(np.float32)
    tensors = {
        PROBABILITIES: ("FP32", list(proba.shape), proba),
        PREDICTIONS: ("INT64", [len(proba)], proba.argmax(axis=1).astype(np.int64)),
    }
    all_binary = bool((req.parameters or {}).get("binary_data_output", False))
    wanted = req.outputs or [RequestedOutput(name=n) for n in tensors]
    outputs, chunks = [], []
    for out in wanted:
        datatype, shape, values = tensors[out.name]
        entry: dict[str, Any] = {"name": out.name, "datatype": datatype, "shape": shape}
        if (out.parameters or {}).get("binary_data", all_binary):
            raw = values.astype(values.dtype.newbyteorder("<")).tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = values.reshape(-1).tolist()
        outputs.append(entry)
    answer = {
        "model_name": name,
        "model_version": str(result.version),
        "id": req.id or rid,
        "outputs": outputs,
    }
    if not chunks:
        return JSONResponse(answer)
    header = json.dumps(answer, separators=(",", ":")).encode()
    return Response(
        header + b"".join(chunks),
        media_type="application/octet-stream",
        headers={INFER_HEADER: str(len(header))},
    )


def model_metadata(name: str, versions: list[int], signature: dict) -> dict:
    """``GET /v2/models/{name}[/versions/{v}]``: what the model takes and gives."""
    return {
        "name": name,
        "versions": [str(v) for v in versions],
        "platform": PLATFORM,
        "inputs": [
            {"name": INPUT_NAME, "datatype": "FP32", "shape": [-1, *signature["input_shape"]]}
        ],
        "outputs": [
            {"name": PROBABILITIES, "datatype": "FP32", "shape": [-1, signature["num_classes"]]},
            {"name": PREDICTIONS, "datatype": "INT64", "shape": [-1]},
        ],
    }
