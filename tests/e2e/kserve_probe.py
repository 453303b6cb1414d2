"""Run by the kserve SDK's own interpreter (an isolated venv, see
test_open_inference_protocol.py): KServe's REST client against aimass's Open Inference
Protocol routes. Prints one JSON line of what it saw.

    kserve-venv/bin/python kserve_probe.py BASE_URL API_KEY MODEL ROWS_JSON
"""

import asyncio
import json
import sys

import numpy as np
from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig


async def probe(base_url: str, key: str, model: str, rows: np.ndarray) -> dict:
    headers = {"Authorization": f"Bearer {key}"}
    client = InferenceRESTClient(RESTConfig(protocol="v2", retries=0, timeout=30))
    try:
        seen = {
            "live": await client.is_server_live(base_url, headers=headers),
            "ready": await client.is_server_ready(base_url, headers=headers),
            "model_ready": await client.is_model_ready(base_url, model, headers=headers),
        }
        for binary in (False, True):
            tensor = InferInput("input", list(rows.shape), "FP32")
            tensor.set_data_from_numpy(rows, binary_data=binary)
            request = InferRequest(model, [tensor], request_id=f"kserve-{binary}")
            answer = await client.infer(base_url, request, model, headers=dict(headers))
            probabilities = answer.get_output_by_name("probabilities").as_numpy()
            seen["binary" if binary else "json"] = {
                "model_name": answer.model_name,
                "id": answer.id,
                "probabilities": probabilities.tolist(),
            }
        try:
            await client.infer(base_url, request, model, headers={"Authorization": "Bearer x"})
            seen["wrong_key"] = None
        except Exception as err:  # httpx.HTTPStatusError: the 401 with the protocol's error
            seen["wrong_key"] = [err.response.status_code, err.response.json()]
    finally:
        await client.close()
    return seen


if __name__ == "__main__":
    url, key, name, rows_json = sys.argv[1:]
    rows = np.asarray(json.loads(rows_json), dtype=np.float32)
    print(json.dumps(asyncio.run(probe(url, key, name, rows))))
