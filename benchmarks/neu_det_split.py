"""Write the published NEU-DET detection split (engine/datasets/splits/neu_det_{train,validation,test}.txt).

The split is not chosen here: it is the rule every set without a split of its own gets (engine.datasets.detection's
stable 70/10/20 of the labelled images by file-name hash, stratified by class), applied to ../shared/data/neu_det.
The lists are committed so the benchmark split is visible and citable; tests/test_detection_data.py checks that the
rule still reproduces them.

    python -m benchmarks.neu_det_split [--data ../shared/data/neu_det]
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

from engine.datasets.detection import SPLITS, load_detection_set

REPO = Path(__file__).resolve().parents[1]
SPLIT_DIR = REPO / "engine" / "datasets" / "splits"


def write_split_lists(data: Path, out_dir: Path = SPLIT_DIR, prefix: str = "neu_det") -> dict[str, int]:
    """One sorted file-name list per part; returns the number of images in each."""
    dataset = load_detection_set(data)
    out_dir.mkdir(parents=True, exist_ok=True)
    counts = {}
    for part in SPLITS:
        names = sorted(s.image_path.name for s in dataset.select(part))
        (out_dir / f"{prefix}_{part}.txt").write_text("".join(f"{n}\n" for n in names))
        counts[part] = len(names)
    per_class = Counter((s.split, dataset.classes[int(s.labels[0])]) for s in dataset.samples if len(s.labels))
    for part in SPLITS:
        print(part, counts[part], {c: per_class[(part, c)] for c in dataset.classes})
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "neu_det")
    args = parser.parse_args()
    write_split_lists(args.data)


if __name__ == "__main__":
    main()
