"""Job kinds of promptable segmentation: importing SAM checkpoints, training DefectScope's own segmenter,
proposing masks from anomaly maps. Imported for their registrations."""

from engine.jobs import kinds_autoprompt, kinds_sam_import, kinds_segmenter

__all__ = ["kinds_autoprompt", "kinds_sam_import", "kinds_segmenter"]
