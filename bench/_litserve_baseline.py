"""LitServe serving the champion's ONNX file: the peer a user would try first on one node.

    python -m bench._litserve_baseline --port P --onnx model.onnx --input-shape 1 8 8

Started by ``bench._serve_load.server(..., module=__name__)`` for ``bench.serve_overhead``.
LitServe's own way, tuned as its docs suggest for a small CPU model: one worker, dynamic
batching (up to 16 requests, 2 ms), its API-key check on (``LIT_SERVER_API_KEY``: the client
sends ``X-API-Key``), the same ONNX Runtime thread count as our Predictor, and the same
request and answer JSON as ``/v1/models/{name}/predict``.

The LitAPI is a module-level class: LitServe starts its inference worker as a separate
process, which must be able to import it.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import litserve as ls
import numpy as np

HOST = "127.0.0.1"
MAX_BATCH = 16
BATCH_TIMEOUT_S = 0.002


class OnnxAPI(ls.LitAPI):
    """One instance per request in, the predict route's answer out; batched in between."""

    def __init__(self, onnx: Path, input_shape: list[int], threads: int, model: str, version: int):
        super().__init__(
            max_batch_size=MAX_BATCH,
            batch_timeout=BATCH_TIMEOUT_S,
            api_path=f"/v1/models/{model}/predict",
        )
        self.onnx, self.input_shape, self.threads = onnx, input_shape, threads
        self.model, self.version = model, version

    def setup(self, device) -> None:
        from models.onnx_export import INPUT_NAME, OUTPUT_NAME, cpu_session

        self.session = cpu_session(self.onnx, self.threads)
        self.io = (INPUT_NAME, OUTPUT_NAME)

    def decode_request(self, request: dict) -> np.ndarray:
        (instance,) = request["instances"]
        return np.asarray(instance, dtype=np.float32).reshape(self.input_shape)

    def batch(self, inputs: list[np.ndarray]) -> np.ndarray:
        return np.stack(inputs)

    def predict(self, x: np.ndarray) -> np.ndarray:
        from models.evaluation import softmax

        input_name, output_name = self.io
        return softmax(self.session.run([output_name], {input_name: x})[0])

    def unbatch(self, output: np.ndarray) -> list[np.ndarray]:
        return list(output)

    def encode_response(self, proba: np.ndarray) -> dict:
        return {
            "model": self.model,
            "version": self.version,
            "predictions": [int(proba.argmax())],
            "probabilities": [proba.astype(np.float64).round(6).tolist()],
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--onnx", type=Path, required=True)
    parser.add_argument("--input-shape", type=int, nargs="+", required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--model", default="digits")
    parser.add_argument("--version", type=int, default=1)
    args = parser.parse_args()
    if not os.environ.get("LIT_SERVER_API_KEY"):
        raise SystemExit("LIT_SERVER_API_KEY must be set: the baseline checks keys too")
    api = OnnxAPI(args.onnx, args.input_shape, args.threads, args.model, args.version)
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=1)
    server.run(host=HOST, port=args.port, log_level="warning", generate_client_file=False)


if __name__ == "__main__":
    main()
