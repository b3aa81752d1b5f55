"""DefectScope's supervised defect segmentation model: one class per defect type, learned from pixel masks (real
and extra ones, e.g. synthetic defects), exported in the defect segmentation format
(engine.runtime.defect_segmentation_format) with pre- and post-processing inside the ONNX graph."""
