"""Job parameters have one source: the pydantic params models. The CLI's options and the dialogs' fields are
derived from them (defaults, ranges, steps, choices), values are checked by them with messages that name the
field, and engine.jobs registers every kind from one place without an import cycle."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.test_cli import REPO, assert_clean_error, run_cli

KIND_MODULES = ["kinds", "kinds_agssp", "kinds_agssp_pretrain", "kinds_autoprompt", "kinds_defect_segmentation",
                "kinds_detector", "kinds_generator", "kinds_multimodal", "kinds_sam_import", "kinds_segmenter",
                "kinds_synthesis", "kinds_unified"]


def test_train_anomaly_refuses_an_image_size_the_export_cannot_honour(tmp_path):
    """--image-size 288 used to train a 256-px graph while model.json said 288; now it is refused up front."""
    proc = run_cli("train", "anomaly", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "r"),
                   "--image-size", "288")
    assert_clean_error(proc, "--image-size", "image_size", "multiple of 64")
    assert not (tmp_path / "r").exists()

    from engine.errors import DefectScopeError
    from engine.jobs import run_job

    # the engine's API and workers validate with the same model
    with pytest.raises(DefectScopeError, match="image_size: Input should be a multiple of 64"):
        run_job("train_anomaly", {"data": str(tmp_path), "out": str(tmp_path / "r"), "image_size": 288})


def test_cli_values_are_converted_and_refused_one_line_naming_the_option(tmp_path):
    missing = str(tmp_path / "nowhere")
    proc = run_cli("train", "anomaly", "--data", missing, "--out", str(tmp_path / "r"), "--scales", "1,3")
    assert_clean_error(proc, "--scales", "'3'", "1, 2, 4")
    proc = run_cli("train", "anomaly", "--data", missing, "--out", str(tmp_path / "r"), "--bank-size", "many")
    assert_clean_error(proc, "--bank-size", "whole number")
    proc = run_cli("train", "unified", "--data", missing, "--out", str(tmp_path / "r"), "--categories", "a",
                   "--image-size", "100", "--lr", "0")
    assert_clean_error(proc, "--image-size (image_size)", "--lr (lr)", "greater than 0")


@pytest.mark.parametrize(("argv", "kind"), [
    (["train", "anomaly", "--data", "d", "--out", "o"], "train_anomaly"),
    (["train", "unified", "--data", "d", "--out", "o", "--categories", "a"], "train_unified"),
    (["eval", "--model", "m", "--data", "d"], "eval"),
    (["train", "open-detector", "--data", "d", "--out", "o"], "train_open_detector"),
    (["train", "segmentation", "--data", "d", "--out", "o"], "train_segmentation"),
])
def test_cli_defaults_and_choices_are_the_params_models(argv, kind):
    from app.cli import build_parser
    from app.param_options import option_name
    from engine.jobs import get_job_kind
    from engine.jobs.fields import describe_params

    parser = build_parser()
    args = parser.parse_args(argv)
    fields = describe_params(get_job_kind(kind).params)
    for name, field in fields.items():
        if not field.required:
            assert getattr(args, name) == field.default, name
    # the subcommand's choices are the Literal's values, for every choice field
    sub = parser._subparsers._group_actions[0].choices[argv[0]]  # argparse keeps subcommands here
    if argv[0] == "train":
        sub = sub._subparsers._group_actions[0].choices[argv[1]]
    actions = {a.dest: a for a in sub._actions}
    for name, field in fields.items():
        if field.kind == "choice" and not field.multiple:
            assert actions[name].choices == [str(c) for c in field.choices], name
            assert option_name(name) in actions[name].option_strings


def test_unified_image_size_is_left_to_the_job_unless_given():
    from app.cli import build_parser
    from engine.jobs.kinds_unified import TrainUnifiedParams

    assert TrainUnifiedParams.model_fields["image_size"].default is None
    args = build_parser().parse_args(["train", "unified", "--data", "d", "--out", "o", "--resume", "r",
                                      "--add", "x"])
    assert args.image_size is None  # a resume keeps the saved size instead of forcing a CLI default on it
    assert TrainUnifiedParams(data="d", categories=["a"], out="o", image_size=128).image_size == 128


def test_dialog_fields_take_ranges_steps_and_defaults_from_the_model(qtbot):
    pytest.importorskip("PySide6", reason="GUI extra not installed")
    from app.gui.job_dialog import TrainDialog
    from app.gui.param_form import DEFAULT_TEXT
    from app.gui.unified_dialog import UnifiedDialog
    from engine.jobs.kinds import TrainAnomalyParams
    from engine.jobs.kinds_unified import TrainUnifiedParams

    dialog = TrainDialog("/data", check_paths=False)
    qtbot.addWidget(dialog)
    size = TrainAnomalyParams.model_fields["image_size"]
    assert (dialog.image_size.minimum(), dialog.image_size.maximum()) == (64, 2048)
    assert dialog.image_size.singleStep() == 64 and dialog.image_size.value() == size.default
    assert (dialog.bank_size.minimum(), dialog.bank_size.maximum(), dialog.bank_size.value()) == (16, 1_000_000,
                                                                                                  10_000)
    assert [dialog.backbone_box.itemText(i) for i in range(dialog.backbone_box.count())] == [
        "efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2"]
    assert dialog.image_size.toolTip().startswith("Longer image side")

    unified = UnifiedDialog("/data", ["a"], check_paths=False)
    qtbot.addWidget(unified)
    assert (unified.epochs.minimum(), unified.epochs.maximum(), unified.epochs.value()) == (1, 10_000, 50)
    assert unified.image_size.maximum() == 1024 and unified.image_size.singleStep() == 64
    assert unified.image_size.text() == DEFAULT_TEXT  # None: the job decides (256 new, saved size on resume)
    unified.set_products(["a"])
    assert "image_size" not in unified.params()
    unified.image_size.setValue(128)
    assert TrainUnifiedParams.model_validate({**unified.params(), "out": "o"}).image_size == 128


def test_param_form_covers_every_kind_and_defaults_match(qtbot):
    pytest.importorskip("PySide6", reason="GUI extra not installed")
    from PySide6.QtWidgets import QCheckBox, QDoubleSpinBox

    from app.gui.param_form import ParamForm
    from engine.jobs import job_kinds
    from engine.jobs.fields import describe_params

    for kind in job_kinds().values():
        fields = describe_params(kind.params)
        form = ParamForm(kind.params, list(fields))
        for name, field in fields.items():
            qtbot.addWidget(form.widget(name))
            if not field.required:
                assert form.value(name) == field.default, (kind.name, name)
    form = ParamForm.for_job("train_unified", ["lr", "project"])
    assert isinstance(form.widget("lr"), QDoubleSpinBox) and form.widget("lr").maximum() == 1.0
    assert isinstance(form.widget("project"), QCheckBox) and form.widget("project").isChecked()


def test_dialog_refuses_an_invalid_value_with_the_fields_message(qtbot):
    pytest.importorskip("PySide6", reason="GUI extra not installed")
    from PySide6.QtCore import Qt
    from PySide6.QtWidgets import QDialog, QDialogButtonBox

    from app.gui.job_dialog import FIELD_ERROR_STYLE, TrainDialog

    dialog = TrainDialog("/data", check_paths=False)
    qtbot.addWidget(dialog)
    dialog.show()
    dialog.image_size.setValue(288)  # typed: the spin box's step does not stop it
    qtbot.mouseClick(dialog.buttons.button(QDialogButtonBox.StandardButton.Ok), Qt.MouseButton.LeftButton)
    assert dialog.isVisible() and dialog.result() != QDialog.DialogCode.Accepted
    assert dialog.error_label.text() == "Image size: Input should be a multiple of 64"
    assert dialog.image_size.styleSheet() == FIELD_ERROR_STYLE
    dialog.image_size.setValue(320)
    qtbot.mouseClick(dialog.buttons.button(QDialogButtonBox.StandardButton.Ok), Qt.MouseButton.LeftButton)
    assert dialog.result() == QDialog.DialogCode.Accepted and dialog.params()["image_size"] == 320


def test_job_kinds_declare_their_model_output():
    from pydantic import BaseModel

    from engine.jobs import JobKind, job_kinds

    with_models = {name for name, kind in job_kinds().items() if kind.model_output}
    assert with_models == {"train_anomaly", "train_detector", "train_open_detector", "train_multimodal",
                           "train_unified", "train_segmentation"}
    for name in with_models:
        kind = job_kinds()[name]
        assert kind.model_output in kind.outputs.values()

    class P(BaseModel):
        out: str

    with pytest.raises(ValueError, match="model_output 'model' is not one of its outputs"):
        JobKind(name="x", entry="m:f", params=P, outputs={"out": "run"}, model_output="model")


def test_engine_jobs_has_no_import_cycle():
    import grimp

    graph = grimp.build_graph("engine")
    modules = sorted(m for m in graph.modules if m.startswith("engine.jobs."))
    cycles = []
    for module in modules:
        for imported in graph.find_modules_directly_imported_by(module):
            if imported.startswith("engine.jobs") and graph.find_shortest_chain(importer=imported,
                                                                               imported=module):
                cycles.append(f"{module} <-> {imported}")
    assert cycles == []


@pytest.mark.parametrize("module", KIND_MODULES)
def test_each_kinds_module_imports_alone_and_every_kind_is_registered(module):
    code = (f"import engine.jobs.{module} as m\n"
            "from engine.jobs import job_kinds\n"
            "print(len(job_kinds()))\n"
            "assert 'torch' not in __import__('sys').modules\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                          env={"PYTHONPATH": str(REPO), "PATH": ""}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    from engine.jobs import job_kinds

    assert int(proc.stdout) == len(job_kinds()) >= 14
