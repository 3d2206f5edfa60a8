"""The bare handler bench_serve.py compares `tlearn serve` with: what a hand-written service for the same ONNX
model does (FastAPI under uvicorn, one `def` endpoint taking the same multipart upload, Pillow decode + resize +
centre crop + normalise in NumPy, one onnxruntime call per request; no micro-batching, no guards).

    python benchmarks/_bare_server.py MODEL.onnx PORT

No `from __future__ import annotations` here: FastAPI reads the endpoint's annotations at run time.
"""

import io
import sys
from pathlib import Path

import numpy as np
import uvicorn
from fastapi import FastAPI, File, UploadFile
from PIL import Image

from tlearn.engines.onnx_engine import INPUT_NAME, OUTPUT_NAME, OnnxClassifier


def main(model: Path, port: int) -> None:
    engine = OnnxClassifier.load(model)
    session, spec = engine.session, engine.config.preprocessing_spec()
    height, width = spec.input_size
    mean = np.array(spec.mean, dtype=np.float32).reshape(1, 3, 1, 1)
    std = np.array(spec.std, dtype=np.float32).reshape(1, 3, 1, 1)
    app = FastAPI()

    @app.get("/readyz")
    def ready() -> dict:
        return {"status": "ready"}

    @app.post("/v1/predict")
    def predict(files: list[UploadFile] = File(...)) -> dict:  # noqa: B008 - FastAPI's idiom
        batch = []
        for upload in files:
            image = Image.open(io.BytesIO(upload.file.read())).convert("RGB")
            scale = max(height, width) / spec.crop_pct / min(image.size)
            image = image.resize((round(image.width * scale), round(image.height * scale)), Image.BILINEAR)
            left, top = (image.width - width) // 2, (image.height - height) // 2
            pixels = np.asarray(image.crop((left, top, left + width, top + height)), dtype=np.float32) / 255
            batch.append(pixels.transpose(2, 0, 1))
        probabilities = session.run([OUTPUT_NAME], {INPUT_NAME: (np.stack(batch) - mean) / std})[0]
        return {"predictions": [{"probabilities": row.tolist()} for row in probabilities]}

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]))
