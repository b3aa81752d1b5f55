"""AGSSP: anomaly maps of unlabelled images as free supervision for the detector (pseudo boxes, backbone
pretraining)."""
