"""Defect-Gen (trainers.defectgen): the one shared plan of absolute timesteps (and the public code's switch bug
failing it), which model really runs at each step, deterministic sampling, a tiny real training run whose sampled
masks sit on the defects it paints, the generator folder, and the job's parameter checks."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from trainers.defectgen.schedule import LARGE, SMALL, PlanStep, sampling_plan

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

T, S, STEPS = 1000, 400, 50
TYPES = ["dark_disc", "bright_bar"]  # _shapes: type 1 dark blobs, type 2 bright bars (write_mvtec's names)


def plan_problems(plan: list[PlanStep], num_timesteps: int, switch_step: int) -> list[str]:
    """What is wrong with a sampling plan: the rules of one shared schedule of absolute timesteps."""
    problems = []
    ts = [p.t for p in plan]
    if ts[0] < num_timesteps - num_timesteps // len(plan):
        problems.append(f"starts at t={ts[0]}, not at the noisiest end (~{num_timesteps - 1})")
    if ts[-1] != 0:
        problems.append(f"ends at t={ts[-1]}, not 0")
    if any(b >= a for a, b in itertools.pairwise(ts)):
        problems.append("timesteps not strictly decreasing (a step repeated or re-run)")
    if len(set(ts)) != len(ts):
        problems.append("a timestep visited twice")
    wrong = [p.t for p in plan if p.model != (LARGE if p.t >= switch_step else SMALL)]
    if wrong:
        problems.append(f"wrong model at t={wrong[:5]}")
    if any(p.t_prev != q.t for p, q in itertools.pairwise(plan)) or plan[-1].t_prev != -1:
        problems.append("a step does not land on the next step's timestep")
    return problems


def buggy_plan(num_timesteps: int, switch_step: int, steps: int) -> list[PlanStep]:
    """The public code's plan: relative indices taken as absolute, so the large model runs
    T-s-1 .. 0 (599 .. 0) and the small model then re-runs s-1 .. 0 (399 .. 0)."""
    n_large = round(steps * (num_timesteps - switch_step) / num_timesteps)

    def run(top: int, n: int, model: str) -> list[PlanStep]:
        ts = [int(v) for v in np.round(np.linspace(top, 0, n))]
        return [PlanStep(t, p, model) for t, p in zip(ts, [*ts[1:], -1], strict=True)]

    return run(num_timesteps - switch_step - 1, n_large, LARGE) + run(switch_step - 1, steps - n_large, SMALL)


def test_one_shared_plan_of_absolute_timesteps():
    plan = sampling_plan(T, S, STEPS)
    assert len(plan) == STEPS
    assert plan[0].t == T - 1 and plan[-1].t == 0
    assert plan_problems(plan, T, S) == []
    assert all(p.model == LARGE for p in plan if p.t >= S)
    assert all(p.model == SMALL for p in plan if p.t < S)
    assert {p.model for p in plan} == {LARGE, SMALL}
    # other step counts and switch points keep the rules
    for steps, s in ((10, 400), (25, 1), (100, 999), (1000, 400)):
        assert plan_problems(sampling_plan(T, s, steps), T, s) == []
    # the public code's plan breaks them: this check would catch the bug
    bad = plan_problems(buggy_plan(T, S, STEPS), T, S)
    assert any("noisiest" in b for b in bad) and any("strictly decreasing" in b for b in bad)
    with pytest.raises(ValueError):
        sampling_plan(T, 0, STEPS)
    with pytest.raises(ValueError):
        sampling_plan(T, S, 1)


def _tiny_config(steps: int = 1, sampling_steps: int = 20):
    from trainers.defectgen.config import GeneratorConfig, UNetSpec

    return GeneratorConfig(
        resolution=32, crop_size=16, steps_large=steps, steps_small=steps, batch_size=8, lr=2e-3,
        sampling_steps=sampling_steps,
        large=UNetSpec((16, 32, 32), (False, False, True), norm_groups=8, attention_head_dim=16),
        small=UNetSpec((16, 32), (False, False), norm_groups=8))


class Recorder(torch.nn.Module):
    """A real UNet that notes the timesteps it was called with."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.seen: list[int] = []

    def forward(self, x, t, class_labels=None):
        self.seen += sorted(set(t.tolist()))
        return self.inner(x, t, class_labels=class_labels)


def test_sampling_runs_the_large_model_exactly_on_t_at_least_s_and_the_small_one_below():
    from trainers.defectgen.model import build_models
    from trainers.defectgen.sample import sample

    torch.set_num_threads(1)
    cfg = _tiny_config(sampling_steps=STEPS)
    torch.manual_seed(0)
    large, small = (Recorder(m.eval()) for m in build_models(cfg, 2))
    out = sample(large, small, cfg, 2, labels=[0, 1], seed=0)
    plan = sampling_plan(T, S, STEPS)
    assert large.seen == [p.t for p in plan if p.t >= S]
    assert small.seen == [p.t for p in plan if p.t < S]
    assert large.seen[0] == T - 1 and small.seen[-1] == 0 and min(large.seen) >= S > max(small.seen)
    assert out.images.shape == (2, 32, 32, 3) and out.images.dtype == np.uint8
    assert out.masks.shape == (2, 32, 32) and out.masks.min() >= 0 and out.masks.max() <= 2


def _shapes(n: int, size: int = 32, seed: int = 0):
    """Defect windows of textured grey surfaces, each with one defect: type 1 a dark blob, type 2 a bright thin
    bar."""
    from trainers.defectgen.data import WindowBank, encode

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    out = []
    for i in range(n):
        img = 128 + rng.normal(0, 12, (size, size))
        kind = i % 2 + 1
        cy, cx = rng.integers(8, size - 8, 2)
        if kind == 1:
            m = (yy - cy) ** 2 + (xx - cx) ** 2 <= rng.integers(9, 26)
            img[m] = 40 + rng.normal(0, 6, m.sum())
        else:
            m = (abs(yy - cy) <= 1) & (abs(xx - cx) <= rng.integers(5, 10))
            img[m] = 225 + rng.normal(0, 6, m.sum())
        labels = np.where(m, kind, 0)
        out.append(encode(np.repeat(np.clip(img, 0, 255).astype(np.uint8)[..., None], 3, 2), labels, 2))
    kinds = [i % 2 for i in range(n)]
    return WindowBank(torch.from_numpy(np.stack(out)), torch.tensor(kinds),
                      {name: [size] * (n // 2) for name in TYPES})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from trainers.defectgen.fit import fit_generator
    from trainers.defectgen.store import save_generator

    torch.set_num_threads(1)
    cfg = _tiny_config(steps=200)
    large, small, report = fit_generator(_shapes(16), 2, cfg, seed=0)
    folder = tmp_path_factory.mktemp("gen")
    save_generator(folder, large, small, cfg, TYPES, {"steps": report.steps, "window_sides": {t: [24, 40] for t in TYPES},
                                                      "draw": {"shots_per_type": 2, "shots_seed": 0}})
    return large, small, cfg, folder, report


def test_sampling_is_deterministic(trained):
    from trainers.defectgen.sample import sample

    large, small, cfg, _folder, _report = trained
    a = sample(large, small, cfg, 2, labels=[0, 1, 0], seed=7)
    b = sample(large, small, cfg, 2, labels=[0, 1, 0], seed=7)
    c = sample(large, small, cfg, 2, labels=[0, 1, 0], seed=8)
    assert np.array_equal(a.images, b.images) and np.array_equal(a.masks, b.masks)
    assert not np.array_equal(a.images, c.images)
    with pytest.raises(ValueError, match="defect type indices"):
        sample(large, small, cfg, 2, labels=[2], seed=0)


@pytest.mark.slow
def test_tiny_training_paints_the_asked_type_where_its_masks_are(trained):
    """Dark blobs (type 1) and bright bars (type 2) on grey, asked for by type: each sample's mask must be mostly
    of the type asked for, and sit on dark or bright pixels respectively, which an image-mask pair drawn
    independently (or a type drawn at random) would not."""
    from trainers.defectgen.sample import sample

    large, small, cfg, _folder, report = trained
    assert report.loss_history["large"][-1]["loss"] < report.loss_history["large"][0]["loss"]
    asked = [0] * 8 + [1] * 8
    out = sample(large, small, cfg, 2, labels=asked, seed=1)
    grey = out.images.astype(np.float64).mean(-1)
    for k in (0, 1):
        rows = [i for i, a in enumerate(asked) if a == k]
        masks, g = out.masks[rows], grey[rows]
        own, other = int((masks == k + 1).sum()), int((masks == 2 - k).sum())
        assert own >= 10 and own > 3 * other, (k, own, other)
        inside, background = g[masks == k + 1].mean(), g[masks == 0].mean()
        # dark blobs darker than the surface, bright bars brighter, by a wide margin
        assert (background - inside if k == 0 else inside - background) > 30, (k, inside, background)


def test_generator_jobs_train_on_defect_windows_and_paste_onto_good_parts(tmp_path):
    """train_generator and sample_generator through the engine's job runner, as the CLI and the GUI run them,
    on a generated MVTec set: windows around the drawn defects only, and synthetic images that are the dataset's
    good training parts with a generated defect whose mask is where the image changed."""
    import engine.jobs.kinds_generator  # noqa: F401  (registers the kinds until engine.jobs.catalog lists them)
    from engine.datasets.imageio import read_image, read_mask
    from engine.jobs import run_job
    from engine.synthesis.synthetic_set import read_manifest
    from tests.test_defect_segmentation import write_mvtec
    from trainers.defectgen.sample import sample
    from trainers.defectgen.store import load_generator

    torch.set_num_threads(1)
    data = write_mvtec(tmp_path / "tiles")
    gen = tmp_path / "gen"
    result = run_job("train_generator", {"data": str(data), "out": str(gen), "shots_per_type": 2, "steps": 3,
                                         "batch_size": 2, "device": "cpu"})
    tr = result["metadata"]["training"]
    assert len(tr["trained_on"]) == 4 and tr["steps"] == {"large": 3, "small": 3}
    assert tr["n_windows"] == 4 * 12 and all(len(v) == 24 for v in tr["window_sides"].values())
    assert tr["grey"] is True  # write_mvtec's parts are grey: the synthetic ones must be too
    assert all(16 <= side <= 128 for v in tr["window_sides"].values() for side in v)
    large, small, cfg, meta = load_generator(gen)
    assert meta["classes"] == sorted(meta["classes"]) and cfg.resolution == 64
    a, b = sample(large, small, cfg, 2, labels=[0, 1], seed=3), sample(large, small, cfg, 2, labels=[0, 1], seed=3)
    assert np.array_equal(a.images, b.images) and np.array_equal(a.masks, b.masks)

    # the 3-step generator paints noise; sampling keeps the windows that painted their type and redraws the rest
    run_job("sample_generator", {"generator": str(gen), "out": str(tmp_path / "syn"), "count_per_type": 2,
                                 "sampling_steps": 4, "device": "cpu", "max_draws_factor": 10})
    manifest = read_manifest(tmp_path / "syn")
    assert manifest["method"] == "defectgen" and manifest["good_parts_from"] == str(data)
    assert manifest["sampling"]["drawn"] >= 2
    goods = [read_image(p) for p in sorted((data / "train" / "good").glob("*.png"))]
    for row in manifest["samples"]:
        image = read_image(tmp_path / "syn" / row["image"])
        mask = read_mask(tmp_path / "syn" / row["mask"], image.shape[:2])
        assert image.shape == (128, 128, 3) and mask.any() and row["type"] in meta["classes"]
        assert (image.max(-1) == image.min(-1)).all()
        # a good training part, changed only at and next to the mask (the feathered edge)
        diff = min((np.abs(image.astype(int) - g.astype(int)).max(-1) for g in goods), key=lambda d: (d > 0).sum())
        from scipy.ndimage import binary_dilation
        assert not (diff[~binary_dilation(mask, iterations=2)] > 0).any()


def test_params_refuse_bad_values_naming_the_field(tmp_path):
    from engine.jobs.kinds_generator import SampleGeneratorParams, TrainGeneratorParams
    from engine.jobs.registry import get_job_kind, param_problems

    kind = get_job_kind("train_generator")
    assert kind.params is TrainGeneratorParams and kind.needs_torch and kind.outputs == {"out": "generator"}
    base = {"data": str(tmp_path), "out": str(tmp_path / "g")}
    assert param_problems(TrainGeneratorParams, base) == []
    assert [f for f, _m in param_problems(SampleGeneratorParams, {"generator": "g", "out": "o",
                                                                  "sampling_steps": 1})] == ["sampling_steps"]
    for bad, field in (({"switch_step": 1000}, "switch_step"), ({"preset": "huge"}, "preset"),
                       ({"shots_per_type": 0}, "shots_per_type"), ({"steps": "many"}, "steps"),
                       ({"lr": 0}, "lr"), ({"bogus": 1}, "bogus")):
        problems = param_problems(TrainGeneratorParams, {**base, **bad})
        assert [f for f, _m in problems] == [field], (bad, problems)
