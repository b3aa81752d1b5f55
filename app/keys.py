"""One stable key per image (defined in the engine, which writes predictions under the same keys)."""

from engine.datasets.keys import sample_key

__all__ = ["sample_key"]
