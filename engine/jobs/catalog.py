"""The one place that imports every built-in job kind module, so that each registers itself once.

A new job kind is a new kinds_*.py module plus one line here. The kinds modules import only the registry and the
shared types (never each other), so each can be imported alone and the package has no import cycle.
"""

from engine.jobs import (
    kinds,
    kinds_agssp,
    kinds_agssp_pretrain,
    kinds_autoprompt,
    kinds_defect_segmentation,
    kinds_detector,
    kinds_generator,
    kinds_multimodal,
    kinds_sam_import,
    kinds_segmenter,
    kinds_synthesis,
    kinds_unified,
)

BUILTIN_KIND_MODULES = (kinds, kinds_agssp, kinds_agssp_pretrain, kinds_autoprompt, kinds_defect_segmentation,
                        kinds_detector, kinds_generator, kinds_multimodal, kinds_sam_import, kinds_segmenter,
                        kinds_synthesis, kinds_unified)
