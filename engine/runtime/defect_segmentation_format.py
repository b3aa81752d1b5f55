"""The defect-segmentation model format: a supervised model that labels every pixel with a defect type.

Trained from pixel masks, one class per defect type (trainers.defectseg), so real and synthetic masks have a
consumer. A folder holds two files, so one torch-free runtime (engine.runtime.defect_segmentation) serves it:

defect_segmentation.onnx
    input   "image"               uint8 [H, W, 3] RGB, any size
    outputs "labels"              uint8 [H, W]   0 = background, i = defect class i (defect_segmentation.json
                                                 "classes"[i - 1]): a pixel is a defect where defect_probability
                                                 >= LABEL_THRESHOLD, and then of its most probable defect class
            "defect_probability"  float32 [H, W] 1 - p(background), 0..1: the map shown as a heatmap
            "class_scores"        float32 [K]    per defect class, its highest probability over the image
    Pre-processing is inside the graph, the longest-side frame the detector uses (trainers.common.onnx_export
    `preprocess_nodes`): resize so the longest side is `input_size` (antialiased bilinear), normalise with the
    EfficientNet-Lite statistics, pad bottom/right to input_size x input_size. Post-processing too: the stride-4
    logits [1, K + 1, input_size / 4, input_size / 4] are upsampled to the frame (bilinear), turned into
    probabilities (softmax over background + K classes), cropped to the image's part of the frame and resized to
    H x W (bilinear, which keeps them summing to 1), so every output is in pixels of the ORIGINAL image.

    Why labels decide defect-or-not first (defect_probability >= LABEL_THRESHOLD) and only then which defect: the
    image's verdict (its highest defect_probability against `score_threshold`) and its labelled pixels then agree;
    a plain argmax could call a pixel background at defect_probability 0.6 split over two similar classes.

defect_segmentation.json
    {"format": FORMAT, "classes": [str, ...] (K defect types; 1 <= K <= MAX_CLASSES), "input_size": int,
     "score_threshold": float (the verdict threshold on an image's highest defect_probability; LABEL_THRESHOLD),
     "backbone": str, "architecture": {...}, "parity": {...} (torch vs ONNX Runtime on raw images),
     "validation": {...} (mIoU and per-class IoU on held-out images, engine.segmentation_eval),
     "training": {... "trained_on": [dataset-relative image keys], ...}, "dataset_root": str, "source": str}

    "training"."trained_on" lists every dataset image the model learned from (engine.datasets.keys.sample_key),
    so `defectscope eval` holds out exactly the others (engine.datasets.segmentation, the one split rule).
"""

from __future__ import annotations

FORMAT = "defectscope-defect-segmentation/1"
KIND = "defect_segmentation"  # its name in the model-format registry (engine.runtime.model_format)
TASK = "segmentation"
MODEL_FILE = "defect_segmentation.onnx"
METADATA_FILE = "defect_segmentation.json"
INPUT_NAME = "image"
OUTPUT_NAMES = ("labels", "defect_probability", "class_scores")
BACKGROUND = "background"  # label 0; never a class name
LABEL_THRESHOLD = 0.5
MAX_CLASSES = 254  # labels are uint8 and 0 is background; 255 is kept free (training's "ignore" pixels)
