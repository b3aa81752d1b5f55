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

    def forward(self, x, t):
        self.seen += sorted(set(t.tolist()))
        return self.inner(x, t)


def test_sampling_runs_the_large_model_exactly_on_t_at_least_s_and_the_small_one_below():
    from trainers.defectgen.model import build_models
    from trainers.defectgen.sample import sample

    torch.set_num_threads(1)
    cfg = _tiny_config(sampling_steps=STEPS)
    torch.manual_seed(0)
    large, small = (Recorder(m.eval()) for m in build_models(cfg, 2))
    out = sample(large, small, cfg, 2, n=2, seed=0)
    plan = sampling_plan(T, S, STEPS)
    assert large.seen == [p.t for p in plan if p.t >= S]
    assert small.seen == [p.t for p in plan if p.t < S]
    assert large.seen[0] == T - 1 and small.seen[-1] == 0 and min(large.seen) >= S > max(small.seen)
    assert out.images.shape == (2, 32, 32, 3) and out.images.dtype == np.uint8
    assert out.masks.shape == (2, 32, 32) and out.masks.min() >= 0 and out.masks.max() <= 2


def _shapes(n: int, size: int = 32, seed: int = 0):
    """Textured grey surfaces, each with one defect: type 1 a dark blob, type 2 a bright thin bar."""
    from trainers.defectgen.data import encode

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
    return torch.from_numpy(np.stack(out))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from trainers.defectgen.fit import fit_generator
    from trainers.defectgen.store import save_generator

    torch.set_num_threads(1)
    cfg = _tiny_config(steps=100)
    large, small, report = fit_generator(_shapes(16), 2, cfg, seed=0)
    folder = tmp_path_factory.mktemp("gen")
    save_generator(folder, large, small, cfg, ["blob", "bar"], {"steps": report.steps})
    return large, small, cfg, folder, report


def test_sampling_is_deterministic(trained):
    from trainers.defectgen.sample import sample

    large, small, cfg, _folder, _report = trained
    a = sample(large, small, cfg, 2, n=3, seed=7)
    b = sample(large, small, cfg, 2, n=3, seed=7)
    c = sample(large, small, cfg, 2, n=3, seed=8)
    assert np.array_equal(a.images, b.images) and np.array_equal(a.masks, b.masks)
    assert not np.array_equal(a.images, c.images)


@pytest.mark.slow
def test_tiny_training_paints_defects_where_its_masks_are(trained):
    """Dark blobs (type 1) and bright bars (type 2) on grey: the sampled masks must sit on dark and bright pixels
    respectively, which an image-mask pair drawn independently would not."""
    from trainers.defectgen.sample import sample

    large, small, cfg, _folder, report = trained
    assert report.loss_history["large"][-1]["loss"] < report.loss_history["large"][0]["loss"]
    out = sample(large, small, cfg, 2, n=16, seed=1)
    grey = out.images.astype(np.float64).mean(-1)
    background = grey[out.masks == 0].mean()
    present = [k for k in (1, 2) if (out.masks == k).sum() >= 10]
    assert present, "no sampled defect at all"
    for k in present:
        inside = grey[out.masks == k].mean()
        # dark blobs darker than the surface, bright bars brighter, by a wide margin
        assert (background - inside if k == 1 else inside - background) > 30, (k, inside, background)


def test_generator_folder_round_trip_and_synthetic_set(trained, tmp_path):
    import engine.jobs.kinds_generator  # noqa: F401  (registers the kinds until engine.jobs.catalog lists them)
    from engine.datasets.imageio import read_image, read_mask
    from engine.jobs import run_job
    from engine.synthesis.synthetic_set import read_manifest
    from trainers.defectgen.sample import sample
    from trainers.defectgen.store import load_generator

    large, small, cfg, folder, _report = trained
    l2, s2, cfg2, meta = load_generator(folder)
    assert cfg2 == cfg and meta["classes"] == ["blob", "bar"]
    assert meta["channels"] == ["R", "G", "B", "background", "blob", "bar"]
    a, b = sample(large, small, cfg, 2, n=2, seed=3), sample(l2, s2, cfg2, 2, n=2, seed=3)
    assert np.array_equal(a.images, b.images) and np.array_equal(a.masks, b.masks)
    # through the engine's job runner, as the CLI and the GUI run it
    result = run_job("sample_generator", {"generator": str(folder), "out": str(tmp_path / "syn"),
                                          "count_per_type": 1, "sampling_steps": 10, "width": 40, "height": 48,
                                          "device": "cpu", "max_draws_factor": 4})
    manifest = read_manifest(tmp_path / "syn")
    assert manifest["method"] == "defectgen" and manifest["sampling"]["drawn"] >= 2
    assert result["n_images"] == sum(manifest["per_type"].values()) >= 1
    first = manifest["samples"][0]
    assert read_image(tmp_path / "syn" / first["image"]).shape == (48, 40, 3)
    assert read_mask(tmp_path / "syn" / first["mask"], (48, 40)).any()


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
