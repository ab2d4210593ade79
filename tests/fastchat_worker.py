"""A FastChat model worker, for interoperability tests: FastChat's own worker app and its own
`generate_stream` (fschat 0.2.36), running the bundled model loaded by parley's loader.

    python tests/fastchat_worker.py CONTROLLER_URL PORT MODEL_NAME CONV_TEMPLATE
"""

from __future__ import annotations

import json
import sys

import torch
import uvicorn
from fastchat.serve import base_model_worker
from fastchat.serve.base_model_worker import BaseModelWorker
from fastchat.serve.inference import generate_stream

from parley.engines.engine_options import TransformersOptions
from parley.engines.hf.loading import load_model_and_tokenizer
from parley.models.source import resolve_model_source


class FastChatWorker(BaseModelWorker):
    def __init__(self, controller: str, address: str, name: str, conv_template: str):
        super().__init__(controller, address, "test", name, [name], 4, conv_template=conv_template)
        model, tokenizer, _ = load_model_and_tokenizer(resolve_model_source(None), TransformersOptions(device="cpu"))
        self.model, self.tokenizer = model, tokenizer
        self.context_len = 8192
        self.init_heart_beat()

    def generate_stream_gate(self, params):
        with torch.inference_mode():
            for output in generate_stream(self.model, self.tokenizer, params, "cpu", self.context_len, 2):
                yield json.dumps({"text": output["text"], "error_code": 0, "usage": output.get("usage"),
                                  "finish_reason": output.get("finish_reason")}).encode() + b"\0"

    def generate_gate(self, params):
        last = None
        for chunk in self.generate_stream_gate(params):
            last = chunk
        return json.loads(last[:-1])


if __name__ == "__main__":
    controller, port, name, conv_template = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    base_model_worker.worker = FastChatWorker(controller, f"http://127.0.0.1:{port}", name, conv_template)
    uvicorn.run(base_model_worker.app, host="127.0.0.1", port=port, log_level="warning")
