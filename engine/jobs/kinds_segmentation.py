"""Job kinds of promptable segmentation: importing SAM checkpoints, training DefectScope's own segmenter."""
