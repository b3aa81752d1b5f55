"""The AGSSP job kinds: pseudo_boxes (anomaly maps of an unlabelled pool -> one-class pseudo boxes and map targets
for detector and backbone pretraining; the run folder's layout is engine.pseudo_pool_format).

Kept torch-free: the entry point is imported only when a job runs.
"""

from __future__ import annotations

from pydantic import BaseModel, Field, field_validator

from engine.jobs.registry import JobKind, register_job_kind
from engine.jobs.types import Device

SCORER_MUTUAL = "mutual"


class PseudoBoxesParams(BaseModel, extra="forbid"):
    pool: list[str] = Field(min_length=1, description="folders of unlabelled images, searched recursively; each "
                                                      "folder is one group (images are compared within it)")
    out: str = Field(description="run folder: pool.json, maps.npy, detections.json and a COCO set in coco/")
    # None is mutual scoring; "mutual" is accepted as its name (and turned into None before the engine checks path
    # parameters, so it is never mistaken for a folder).
    scorer: str | None = Field(default=None, description="'mutual' (default: each image scored against the others "
                                                         "of its group, no good images needed), or an anomaly model "
                                                         "folder or job reference")
    exclude: list[str] = Field(default_factory=list,
                               description="dataset roots whose test images (the split eval uses) must never be in "
                                           "the pool")
    margin: float = Field(default=0.1, ge=0.0, le=1.0,
                          description="threshold = mean of the pool's normalised map maxima minus this")
    top_k: int = Field(default=10, ge=1, le=1000, title="Boxes per image", description="pseudo boxes kept per image "
                                                                                        "(after NMS)")
    nms_iou: float = Field(default=0.8, gt=0.0, le=1.0, title="NMS IoU",
                           description="a box overlapping a higher-scored one by more is dropped")
    references: int = Field(default=32, ge=1, le=512, description="mutual scoring: images each image is compared "
                                                                   "with (all of its group when smaller)")
    seed: int = Field(default=0, ge=0, description="random seed of the reference choice (same seed, same boxes)")
    device: Device = "auto"

    @field_validator("scorer", mode="before")
    @classmethod
    def _mutual_is_default(cls, value: object) -> object:
        return None if isinstance(value, str) and value.strip().lower() in (SCORER_MUTUAL, "") else value


register_job_kind(
    JobKind(
        name="pseudo_boxes",
        entry="trainers.agssp.pseudo_job:pseudo_boxes_job",
        params=PseudoBoxesParams,
        description="Score an unlabelled image pool (mutual scoring or an anomaly model) and turn the anomaly maps "
                    "into one-class pseudo boxes and map targets for detector and backbone pretraining",
        needs_torch=True,  # mutual scoring; an anomaly-model scorer runs through ONNX Runtime
        outputs={"out": "pseudo_boxes"},
        path_params=("pool", "exclude", "scorer"),
    )
)
