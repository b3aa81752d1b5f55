"""Engine entry points of the synthesize and curate_synthetic_set job kinds (engine.jobs.kinds_synthesis)."""

from __future__ import annotations

from engine.datasets.segmentation import load_segmentation_split
from engine.jobs.kinds_synthesis import CurateSyntheticSetParams, SynthesizeParams
from engine.jobs.registry import Progress
from engine.synthesis.curate import reject_samples
from engine.synthesis.procedural import typed_samples
from engine.synthesis.synthetic_set import write_synthetic_set


def synthesize_job(params: SynthesizeParams, progress: Progress) -> dict:
    # Every good image of the training split may receive a defect (good parts are never held out); the donors
    # are exactly the real defects a segmentation model with the same draw trains on.
    split = load_segmentation_split(params.data, category=params.category, classes=params.classes,
                                    shots_per_type=params.shots_per_type, shots_seed=params.shots_seed,
                                    good_images=None)
    goods = [s.image_path for s in split.train if s.label == 0]
    donors = {name: [(s.image_path, s.mask_path) for s in split.train if s.label == i + 1 and s.mask_path]
              for i, name in enumerate(split.classes)}
    total = params.count_per_type * len(donors)

    def counted():
        for i, sample in enumerate(typed_samples(goods, donors, params.count_per_type, params.seed)):
            progress(i / max(total, 1), f"synthesised {i} of {total}")
            yield sample

    info = {"method": params.method, "source": str(split.root), "seed": params.seed,
            "donors": {name: sorted(p.name for p, _ in pairs) for name, pairs in donors.items()},
            "shots_per_type": params.shots_per_type, "shots_seed": params.shots_seed, "n_good_parts": len(goods)}
    manifest = write_synthetic_set(params.out, counted(), info)
    progress(1.0, f"{len(manifest['samples'])} synthetic images written")
    return {"run_dir": params.out, "per_type": manifest["per_type"], "n_images": len(manifest["samples"]),
            "donors": info["donors"], "issues": split.issues}


def curate_job(params: CurateSyntheticSetParams, progress: Progress) -> dict:
    progress(0.0, f"removing {len(set(params.reject))} rejected samples from {params.folder}")
    summary = reject_samples(params.folder, params.reject)
    progress(1.0, f"{summary['rejected']} samples rejected, {summary['kept']} kept")
    return summary
