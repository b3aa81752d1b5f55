"""The open-set detector format: a box detector whose classes are an input, given as text or as example boxes.

Its class head does not end in one output per trained class: every location emits a region embedding in the
sentence-embedding space of all-MiniLM-L6-v2 (384-d), and a class is scored by the cosine similarity of that
embedding to the class's query vector. A query is the mean text embedding of a class's phrasings ("crazing",
"fine network of surface cracks") or the mean region embedding of boxes the engineer drew (a visual prototype), so
the class list is chosen at inference time. An open-detector folder holds:

open_detector.onnx
    inputs  "image"              uint8 [H, W, 3] RGB, any size
            "queries"            float32 [C, D]  L2-normalised query vectors, one per class asked for
            "query_calibration"  float32 [C, 2]  per query (scale, bias): class logit = scale * cosine + bias
    outputs "boxes", "scores", "classes"   as the detector format (engine.runtime.detector_format); class indices
                                           index the queries
            "region_boxes"       float32 [L, 4]  every location's box, original pixels (x1, y1 exclusive)
            "region_embeddings"  float32 [L, D]  every location's L2-normalised region embedding
    score = sqrt(sigmoid(scale * cos + bias) * sigmoid(centerness)), pre-processing and per-class ONNX
    NonMaxSuppression inside the graph, as the closed-set detector.

class_queries.npy
    float32 [K, D]: the query vectors of the K trained classes (the mean text embedding of their prompts), so the
    trained classes are detected without the text encoder.

text_encoder/
    the bundled sentence encoder (engine.runtime.text: text_encoder.onnx, tokenizer.json, text_encoder.json) that
    turns typed prompts into queries with no download.

open_detector.json
    {"format": FORMAT, "classes": [K trained class names], "prompts": {class: [phrasings]}, "embedding_dim": D,
     "text_calibration": [scale, bias] (learnt with the text queries), "prototype_calibration": [scale, bias]
     (fitted on validation regions for visual prototypes), "input_size", "min_score", "nms_iou",
     "max_detections", "score_threshold", "source": "defectscope", "parity": {...}, "validation": {...},
     "training": {...}}
"""

from __future__ import annotations

FORMAT = "defectscope-open-detector/1"
MODEL_FILE = "open_detector.onnx"
METADATA_FILE = "open_detector.json"
QUERIES_FILE = "class_queries.npy"
TEXT_ENCODER_DIR = "text_encoder"
IMAGE_INPUT = "image"
QUERY_INPUT = "queries"
CALIBRATION_INPUT = "query_calibration"
INPUT_NAMES = (IMAGE_INPUT, QUERY_INPUT, CALIBRATION_INPUT)
OUTPUT_NAMES = ("boxes", "scores", "classes")
REGION_OUTPUTS = ("region_boxes", "region_embeddings")
EMBEDDING_DIM = 384  # all-MiniLM-L6-v2
