"""Annotation editing without the GUI: shapes, brush and eraser, undo/redo, saving as you go, export."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from app.annotate.document import AnnotationEditor, AnnotationError, AnnotationStore, ImageAnnotations

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def editor(tmp_path):
    store = AnnotationStore(tmp_path / "data")
    return AnnotationEditor(store, store.load("test/crack/000.png", 200, 100))


def test_shapes_undo_redo_and_every_edit_is_on_disk(editor, tmp_path):
    box = editor.add_box(150, 80, 10, 20, "crack")  # corners in any order
    assert box.points == [[10, 20], [150, 80]]
    editor.add_polygon([(5, 5), (40, 5), (20, 30)], "stain")
    reloaded = editor.store.load("test/crack/000.png", 200, 100)
    assert [s.kind for s in reloaded.shapes] == ["box", "polygon"]
    editor.set_class(box.id, "scratch")
    assert editor.undo() and editor.shapes[0].class_name == "crack"
    assert editor.undo() and len(editor.shapes) == 1
    assert editor.redo() and len(editor.shapes) == 2
    # The undone state is what is saved, so a crash right now keeps exactly what the user sees.
    assert len(editor.store.load("test/crack/000.png", 200, 100).shapes) == 2
    editor.add_box(0, 0, 5, 5, "dent")
    assert not editor.can_redo(), "a new edit ends the redo branch"
    with pytest.raises(AnnotationError, match="three points"):
        editor.add_polygon([(0, 0), (1, 1)], "x")


def test_brush_paints_one_mask_per_class_and_the_eraser_removes_only_paint(editor):
    editor.add_box(0, 0, 50, 50, "crack")
    editor.paint([(100, 50), (140, 50)], radius=5, class_name="crack")
    editor.paint([(100, 70)], radius=3, class_name="crack")
    painted = [s for s in editor.shapes if s.kind == "mask"]
    assert len(painted) == 1, "strokes of one class extend one painted mask"
    m = painted[0].mask((100, 200))
    assert m[50, 120] and m[70, 100] and not m[50, 160]
    area = m.sum()
    editor.paint([(120, 50)], radius=6, class_name="crack", erase=True)
    m2 = next(s for s in editor.shapes if s.kind == "mask").mask((100, 200))
    assert not m2[50, 120] and m2[50, 100] and m2.sum() < area
    editor.paint([(0, 0), (199, 99)], radius=60, class_name="crack", erase=True)
    assert [s.kind for s in editor.shapes] == ["box"], "an erased-away mask disappears; the box is untouched"


def test_copy_labels_to_the_next_image_and_export_through_the_writers(editor, tmp_path):
    editor.add_polygon([(10, 10), (60, 10), (35, 50)], "stain")
    mask = np.zeros((100, 200), bool)
    mask[60:80, 120:170] = True
    editor.add_mask(mask, "crack")
    nxt = AnnotationEditor(editor.store, editor.store.load("test/crack/001.png", 200, 100))
    assert nxt.copy_from(editor.ann) == 2 and all(s.source == "copied" for s in nxt.shapes)
    with pytest.raises(AnnotationError, match="cannot copy"):
        AnnotationEditor(editor.store, ImageAnnotations("x", 10, 10)).copy_from(editor.ann)
    boxes, polygons, union = nxt.ann.geometry()
    assert not boxes and len(polygons) == 2 and union is not None
    assert union[70, 150] and union[20, 35] and not union[5, 190]
    assert sorted(editor.store.annotated_keys()) == ["test/crack/000.png", "test/crack/001.png"]


def test_a_damaged_annotation_file_is_reported_by_name(editor):
    editor.add_box(0, 0, 10, 10, "crack")
    path = editor.store.path("test/crack/000.png")
    path.write_text('{"version": 1, "key": "k", "width": 2')
    with pytest.raises(AnnotationError, match=path.name):
        editor.store.load("test/crack/000.png", 200, 100)


def test_an_edit_survives_a_killed_process(tmp_path):
    code = (
        "import os, signal\n"
        "from app.annotate.document import AnnotationStore, AnnotationEditor\n"
        f"s = AnnotationStore({str(tmp_path / 'data')!r}, folder=__import__('pathlib').Path({str(tmp_path / 'ann')!r}))\n"
        "e = AnnotationEditor(s, s.load('a.png', 64, 64))\n"
        "e.paint([(10, 10), (40, 40)], 4, 'crack')\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == -9
    store = AnnotationStore(tmp_path / "data", folder=tmp_path / "ann")
    shapes = store.load("a.png", 64, 64).shapes
    assert len(shapes) == 1 and shapes[0].mask((64, 64))[25, 25]


def test_drawn_annotations_export_through_the_dataset_writers(demo_data, tmp_path):
    from app.annotate.document import annotated_dataset
    from engine.datasets import load_dataset
    from engine.datasets.imageio import image_size
    from engine.datasets.keys import sample_key
    from engine.datasets.writers import export_dataset

    ds = load_dataset(demo_data / "washer")
    store = AnnotationStore(ds.root, folder=tmp_path / "ann")
    sample = next(s for s in ds.samples if s.split == "train")  # a good image we now find a defect on
    w, h = image_size(sample.image_path)
    key = sample_key(ds.root, sample)
    ed = AnnotationEditor(store, store.load(key, w, h))
    ed.add_polygon([(20, 20), (80, 20), (50, 70)], "burr")
    ed.paint([(150, 150), (180, 160)], radius=6, class_name="burr")
    out = tmp_path / "coco"
    export_dataset(annotated_dataset(ds, store), out, "coco")
    back = load_dataset(out, format="coco").samples
    burr = [s for s in back if s.defect_type == "burr"]  # the only image annotated with that class
    assert len(burr) == 1 and burr[0].label == "defective"
    assert len(burr[0].polygons) == 2 and {p.class_name for p in burr[0].polygons} == {"burr"}
    assert len(back) == len(ds.samples)
