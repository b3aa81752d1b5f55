"""The promptable-segmenter model format: imported SAM / MobileSAM checkpoints and DefectScope's own segmenter.

A segmenter folder holds three files, so one runtime (engine.runtime.segmenter) serves every model family:

encoder.onnx
    input  "image"             uint8 [H, W, 3] RGB, any size
    output "image_embeddings"  float32 [1, C, h, w]
    Pre-processing is inside the graph: resize so the longest side is `input_size` (bilinear), normalise with
    the family's pixel mean/std, pad bottom/right with zeros to input_size x input_size.

decoder.onnx  (the interface of segment_anything.utils.onnx.SamOnnxModel)
    inputs  "image_embeddings" float32 [1, C, h, w]
            "point_coords"     float32 [1, N, 2]  x, y in the RESIZED frame: original * input_size / max(H, W)
            "point_labels"     float32 [1, N]     1 positive, 0 negative, 2 box top-left, 3 box bottom-right,
                                                  -1 padding point (SAM adds one when there is no box)
            "mask_input"       float32 [1, 1, 4h, 4w]  a previous low-res mask logit, or zeros
            "has_mask_input"   float32 [1]        1 when mask_input is used, else 0
            "orig_im_size"     float32 [2]        H, W of the original image
    outputs "masks"            float32 [1, K, H, W]   logits at the original size (mask = logits > 0)
            "iou_predictions"  float32 [1, K]
            "low_res_masks"    float32 [1, K, 4h, 4w]
    K = 4: index 0 is the single-mask output (use it with several prompts), 1..3 the multimask outputs (pick the
    best by predicted IoU for a single ambiguous click).

segmenter.json
    {"format": FORMAT, "family": one of FAMILIES, "input_size": int, "embedding_shape": [C, h, w],
     "pixel_mean": [..3], "pixel_std": [..3], "source": str, "parity": {...}, ...}
"""

from __future__ import annotations

FORMAT = "defectscope-promptseg/1"
ENCODER_FILE = "encoder.onnx"
DECODER_FILE = "decoder.onnx"
METADATA_FILE = "segmenter.json"
FAMILIES = ("sam_vit_b", "sam_vit_l", "sam_vit_h", "mobile_sam_vit_t", "defectscope_effnet")
NUM_MASK_OUTPUTS = 4
