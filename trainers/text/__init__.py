"""The sentence-embedding model for text prompts, exported to ONNX so the app can run it without torch."""
