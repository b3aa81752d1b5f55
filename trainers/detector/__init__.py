"""DefectScope's box detector: a one-stage anchor-free (FCOS-style) detector on an EfficientNet-Lite trunk, its
training (cached frozen-trunk features, then fine-tuning the top stages) and its export to the detector format
(engine.runtime.detector_format) with pre-processing and NMS inside the ONNX graph."""
