"""``spectro train`` (spectro/commands/train.py): its options and the settings objects they make, the call to
:func:`spectro.training.loop.train` (a recorder: nothing trains here), and the lines it prints from the run's
config.json. Training itself is tested in tests/training/."""

from __future__ import annotations

import pytest

from spectro.model.backbones import EMBEDDINGS, ModelSettings
from spectro.model.labels import NORMAL_ONLY
from spectro.paths import IMAGES_DIR, MODELS_DIR
from spectro.scoring.references import SCORERS
from spectro.training.augment import AugmentSettings
from spectro.training.distribute import DistributeSettings
from spectro.training.loop import TrainSettings

from .kit import call, help_text, record, usage_error


def supervised(n=10, auc=0.95, **scorers) -> dict:
    """A split's figures as config.json's ``metrics.<split>`` holds them for a supervised run."""
    overall = {"n": n, "accuracy": 0.9, "balanced_accuracy": 0.85, "auc": auc, "pauc": 0.8 if auc else None,
               "failure_type_accuracy": 0.7}
    return {"overall": overall, **({"scorers": scorers} if scorers else {})}


def normal_only(n=12, **aucs) -> dict:
    """... and for a normal-only run: machine-id accuracy, then each scorer's AUC and pAUC (None: not scored)."""
    return {"overall": {"n": n, "accuracy": 0.75},
            "scorers": {name: {"overall": {"auc": auc, "pauc": None if auc is None else auc - 0.2}}
                        for name, auc in aucs.items()}}


@pytest.fixture
def trained(tmp_path, monkeypatch):
    """``train`` and ``load_config`` recorded: the run is tmp_path/run, its metrics what a test puts in
    ``metrics``."""
    metrics: dict = {}
    train = record(monkeypatch, "train", "train", result=tmp_path / "run")
    load_config = record(monkeypatch, "train", "load_config", result=lambda run: {"metrics": metrics})
    return train, load_config, metrics


# -- options -----------------------------------------------------------------------------------------------------

def test_help_lists_its_options_and_defaults(capsys, monkeypatch):
    text = help_text(capsys, monkeypatch, "train")
    d = TrainSettings()
    assert f"(default: {d.steps})" in text and f"(default: {d.batch_size})" in text
    assert f"{{{','.join(SCORERS)}}}" in text  # the scorer choices, whatever they are


def test_it_calls_train_with_the_settings_its_options_make(tmp_path, capsys, monkeypatch, trained):
    train, load_config, _ = trained
    code, out, err = call(capsys, "train", tmp_path / "img", "--out", tmp_path / "models", "--name", "r1", "--task",
                          NORMAL_ONLY, "--max-fpr", "0.2", "--scorer", SCORERS[0], "--embedding", EMBEDDINGS[-1],
                          "--backbone", "mobilenet_v3_small", "--alpha", "0.75", "--image-size", "128", "--resize",
                          "bilinear", "--weights", "none", "--window-seconds", "1.5", "--steps", "40", "--eval-every",
                          "10", "--fine-tune-steps", "20", "--fine-tune-layers", "5", "--qat-steps", "0",
                          "--batch-size", "8", "--learning-rate", "0.01", "--fine-tune-learning-rate", "0.001",
                          "--lr-schedule", "cosine", "--seed", "3", "--test-ids", "fan/id_06", "id_04",
                          "--val-fraction", "0.25", "--test-fraction", "0.1", "--patience", "2", "--no-augment",
                          "--keep-failed", "--no-learning-check", "--devices", "2", "--mixed-precision",
                          "--no-progress")
    assert (code, err) == (0, "")
    settings = TrainSettings(task=NORMAL_ONLY, steps=40, eval_every=10, fine_tune_steps=20, qat_steps=0,
                             fine_tune_layers=5, batch_size=8, learning_rate=0.01, fine_tune_learning_rate=0.001,
                             lr_schedule="cosine", patience=2, seed=3, val_fraction=0.25, test_fraction=0.1,
                             test_ids=("fan/id_06", "id_04"), augment=AugmentSettings.off(), check_learning=False,
                             max_fpr=0.2, scorer=SCORERS[0])
    model = ModelSettings(backbone="mobilenet_v3_small", alpha=0.75, image_size=128, weights="none", resize="bilinear",
                          window_seconds=1.5, embedding=EMBEDDINGS[-1])
    assert train.call == ((tmp_path / "img", tmp_path / "models"),
                          dict(settings=settings, model_settings=model,
                               distribute=DistributeSettings(devices="2", mixed_precision=True), name="r1",
                               progress=False, keep_failed=True))
    assert load_config.call == ((tmp_path / "run",), {})
    assert out == f"run: {tmp_path / 'run'}\n"  # no figures in config.json: no lines of them


def test_without_options_it_trains_with_the_library_defaults(capsys, trained):
    train, _, _ = trained
    assert call(capsys, "train")[0] == 0
    assert train.call == ((IMAGES_DIR, MODELS_DIR), dict(settings=TrainSettings(), model_settings=ModelSettings(),
                                                          distribute=DistributeSettings(), name=None, progress=False,
                                                          keep_failed=False))


def test_window_seconds_0_means_whole_images(tmp_path, capsys, trained):
    train, _, _ = trained
    assert call(capsys, "train", "--window-seconds", "0")[0] == 0
    assert train.call[1]["model_settings"].window_seconds is None


@pytest.mark.parametrize("argv, message", [
    (["--task", "regression"], "argument --task: invalid choice: 'regression'"),
    (["--scorer", "oracle"], "argument --scorer: invalid choice: 'oracle'"),
    (["--steps", "many"], "argument --steps: invalid int value: 'many'"),
    (["--learning-rate", "fast"], "argument --learning-rate: invalid float value: 'fast'"),
])
def test_a_bad_value_is_a_usage_error_before_training(argv, message, capsys, trained):
    train, _, _ = trained
    assert message in usage_error(capsys, "train", *argv)
    assert train.calls == []


def test_a_bad_setting_is_a_one_line_error_before_training(capsys, trained):
    train, _, _ = trained
    code, _, err = call(capsys, "train", "--val-fraction", "1.5")
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and "val" in err
    assert train.calls == []


# -- what it prints ------------------------------------------------------------------------------------------------

def test_it_prints_a_line_per_split_then_the_run(tmp_path, capsys, trained):
    _, _, metrics = trained
    metrics.update(train=supervised(n=99), val=supervised(n=10), test={"unscored": 4})
    code, out, _ = call(capsys, "train")
    assert code == 0
    val, test, run = out.splitlines()  # the training split's figures are not printed
    assert val.startswith("val (10 images): task accuracy 0.900")
    assert test == ("test: 4 clips of machines without normal references, not scored (enroll their normal recordings "
                    "with 'spectro enroll')")
    assert run == f"run: {tmp_path / 'run'}"


def test_a_worker_that_is_not_the_chief_says_so(capsys, monkeypatch):
    train = record(monkeypatch, "train", "train", result=None)
    record(monkeypatch, "train", "load_config", result=lambda run: pytest.fail("read a run it did not write"))
    assert call(capsys, "train")[:2] == (0, "this worker's part is done; the chief (worker 0) wrote the run\n")
    assert len(train.calls) == 1


def test_format_metrics_of_a_supervised_run():
    from spectro.commands.train import format_metrics

    assert format_metrics("val", supervised()) == ("val (10 images): task accuracy 0.900, balanced accuracy 0.850, "
                                                   "anomaly ROC AUC 0.950, pAUC(0.1) 0.800, failure type accuracy "
                                                   "0.700")
    assert format_metrics("val", supervised(auc=None)) == ("val (10 images): task accuracy 0.900, balanced accuracy "
                                                           "0.850, failure type accuracy 0.700")


def test_format_metrics_of_a_fused_run_names_the_cnn_alone():
    from spectro.commands.train import format_metrics

    line = format_metrics("test", supervised(fused={"overall": {"auc": 0.95}}, cnn={"overall": {"auc": 0.875}}))
    assert line.startswith("test (10 images): task accuracy 0.900, balanced accuracy 0.850, anomaly ROC AUC 0.950, "
                           "pAUC(0.1) 0.800 (fused with ")
    assert line.endswith("; the CNN alone 0.875), failure type accuracy 0.700")
    assert "machine id" not in line


def test_format_metrics_of_a_normal_only_run_lists_each_scored_scorer():
    from spectro.commands.train import format_metrics

    line = format_metrics("test", normal_only(first=0.8, second=None, third=0.625))
    assert line == ("test (12 clips): machine id accuracy 0.750, first AUC 0.800, pAUC(0.1) 0.600, "
                    "third AUC 0.625, pAUC(0.1) 0.425")
