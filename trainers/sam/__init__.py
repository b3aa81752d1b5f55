"""Import SAM (ViT-B/L/H) and MobileSAM (TinyViT) checkpoints into the promptable-segmenter ONNX format."""
