"""DefectScope engine: datasets, metrics, ONNX inference and the job machinery.

Never imports Qt; the inference path (runtime, datasets, metrics, evaluate) never imports torch.
"""

__version__ = "0.1.0"
