"""Job kinds of promptable segmentation: importing SAM checkpoints, proposing masks from anomaly maps.
Imported for their registrations."""

from engine.jobs import kinds_autoprompt, kinds_sam_import

__all__ = ["kinds_autoprompt", "kinds_sam_import"]
