"""AGSSP (anomaly-guided self-supervised pretraining): anomaly maps of an unlabelled pool become one-class pseudo
boxes and map targets (the pseudo_boxes job: engine.pseudo_boxes, engine.pseudo_pool, mutual scoring here), the
detector's trunk learns from the maps (backbone.py), then the detector from the boxes.
"""
