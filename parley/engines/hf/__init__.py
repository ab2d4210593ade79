"""The `transformers` engine: Hugging Face models on CPU, CUDA, MPS or XPU, continuously batched."""
