"""Synthetic defects with their masks: procedural (engine.synthesis.procedural, numpy + OpenCV, the fast default)
and the folders synthetic samples are kept in (engine.synthesis.synthetic_set). Torch-free."""
