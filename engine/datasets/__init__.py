"""Dataset readers. Importing this package registers every built-in format, most specific layout first."""

from engine.datasets.registry import detect_format, formats, get_reader, load_dataset, register_format
from engine.datasets.types import DEFECTIVE, GOOD, UNKNOWN, Box, Dataset, LoadIssue, Polygon, Sample

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
