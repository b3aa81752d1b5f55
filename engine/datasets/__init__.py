"""Dataset readers. Importing this package registers every built-in format, most specific layout first."""

# The reader imports below register the formats; their order is the detection order.
# isort: off
from engine.datasets.registry import detect_format, formats, get_reader, load_dataset, register_format
from engine.datasets.types import DEFECTIVE, GOOD, UNKNOWN, Box, Dataset, LoadIssue, Polygon, Sample
from engine.datasets import mvtec3d  # noqa: F401
from engine.datasets import mvtec  # noqa: F401
from engine.datasets import visa  # noqa: F401
from engine.datasets import coco  # noqa: F401
from engine.datasets import labelme  # noqa: F401
from engine.datasets import voc  # noqa: F401
from engine.datasets import yolo  # noqa: F401
from engine.datasets import folder  # noqa: F401

# isort: on

__all__ = [
    "DEFECTIVE",
    "GOOD",
    "UNKNOWN",
    "Box",
    "Dataset",
    "LoadIssue",
    "Polygon",
    "Sample",
    "detect_format",
    "formats",
    "get_reader",
    "load_dataset",
    "register_format",
]
