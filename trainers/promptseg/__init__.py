"""DefectScope's own promptable defect segmenter (EfficientNet-Lite encoder + SAM prompt encoder / decoder).

Modules: prompts (defects and simulated prompts; numpy/OpenCV only), data (training images, split, feature
cache), model (the torch model), fit (training loop), export (segmenter-format ONNX + parity), job (engine entry).
"""
