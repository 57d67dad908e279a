"""``spectro train``: fine-tune a backbone on the spectrogram PNGs (:func:`spectro.training.loop.train`)."""

from __future__ import annotations

import sys
from pathlib import Path

from spectro.model.backbones import (
    BACKBONES,
    EMBEDDINGS,
    PRETRAINED_ALPHA,
    RESIZE_METHODS,
    SCRATCH_ALPHA,
    ModelSettings,
)
from spectro.model.labels import NORMAL_ONLY, TASKS
from spectro.paths import IMAGES_DIR, MODELS_DIR
from spectro.runs import load_config
from spectro.scoring.references import SCORERS
from spectro.training.augment import AugmentSettings
from spectro.training.distribute import DistributeSettings
from spectro.training.loop import LR_SCHEDULES, TrainSettings, train

HELP = ("Fine-tune a Keras image backbone (MobileNet by default) on the spectrogram PNGs of IMAGES "
        "(written by 'spectro images') and write a run folder to OUT/<run-name>/: model.keras, labels.json, "
        "config.json, splits.csv, history.csv and training.png; OUT/latest points at it. Images are split by "
        "source recording, stratified by machine and label. With pretrained weights the base is frozen while "
        "a new head trains, then its top layers are fine-tuned at a small learning rate; with random "
        "initialisation (--weights none, or ImageNet weights that cannot be had) the whole network trains "
        "in one phase. The model takes a window of each clip (--window-seconds): training draws random windows, "
        "and a clip is scored by the mean of its windows' probabilities. Training lasts a budget of optimizer "
        "steps (--steps), validated every --eval-every steps, and stops early when validation stops improving. "
        "A last, quantisation-aware phase (--qat-steps) trains the model to answer the same "
        "after the rounding of an int8 TFLite file. Whatever --task, the model gives an anomaly score (summed "
        "probability of the abnormal classes) and the most likely failure type. --task normal-only trains on "
        "normal clips only (abnormal ones only measure): the model learns to tell machine ids apart (with one "
        "machine id, from the built-in synthetic machines), and a clip's anomaly score compares its embedding with "
        "its machine's normal references (references.npz), each machine with a threshold from normal clips "
        "alone; 'spectro enroll' adds a machine without retraining.")


def format_metrics(name: str, metrics: dict) -> str:
    """One line of a split's figures (``config.json`` ``metrics.<split>``)."""
    o = metrics["overall"]
    scorers = metrics.get("scorers", {})
    if scorers and "fused" not in scorers:  # a normal-only run: machine-id accuracy, then every scorer
        line = [f"{name} ({o['n']} clips): machine id accuracy {o['accuracy']:.3f}"]
        for scorer, figures in metrics["scorers"].items():
            f = figures["overall"]
            if f["auc"] is not None:
                line.append(f"{scorer} AUC {f['auc']:.3f}, pAUC(0.1) {f['pauc']:.3f}")
        return ", ".join(line)
    parts = [f"{name} ({o['n']} images): task accuracy {o['accuracy']:.3f}",
             f"balanced accuracy {o['balanced_accuracy']:.3f}"]
    if o.get("auc") is not None:
        parts.append(f"anomaly ROC AUC {o['auc']:.3f}, pAUC(0.1) {o['pauc']:.3f}")
        cnn = scorers.get("cnn", {}).get("overall", {}).get("auc")
        if "fused" in scorers and cnn is not None:  # the fused score's parts: the CNN's probability alone
            parts[-1] += f" (fused with the modulation spectrum and mel statistics; the CNN alone {cnn:.3f})"
    if "failure_type_accuracy" in o:
        parts.append(f"failure type accuracy {o['failure_type_accuracy']:.3f}")
    return ", ".join(parts)


def add_arguments(parser) -> None:
    d, m = TrainSettings(), ModelSettings()
    parser.add_argument("images", nargs="?", type=Path, default=IMAGES_DIR,
                        help="folder of spectrogram PNGs with the manifest.csv written by 'spectro images'")
    parser.add_argument("--out", type=Path, default=MODELS_DIR, help="models folder; the run goes to OUT/<name>/")
    parser.add_argument("--name", default=None, help="run folder name (None: <date>-<time>-<task>-<backbone>)")
    parser.add_argument("--task", choices=TASKS, default=d.task,
                        help="training objective: fine classes <machine>/<label>, normal vs abnormal, machine type, "
                             f"or {NORMAL_ONLY}: learn from normal clips only and score clips against normal "
                             "references (finds failures nobody recorded)")
    parser.add_argument("--max-fpr", type=float, default=d.max_fpr,
                        help=f"{NORMAL_ONLY}: false-alarm rate each machine's threshold aims at, from its normal "
                             "validation clips")
    parser.add_argument("--scorer", choices=SCORERS, default=d.scorer,
                        help=f"{NORMAL_ONLY}: the default anomaly score (every scorer is reported; combined: the "
                             "larger of the mahalanobis, melstats and, where the images carry them, modulation views)")
    parser.add_argument("--embedding", choices=EMBEDDINGS, default=m.embedding,
                        help=f"{NORMAL_ONLY}: what the scores compare: the backbone's stride-8 and stride-16 stage "
                             "maps averaged over time (stages), or its pooled features before the head (pool)")
    parser.add_argument("--backbone", choices=BACKBONES, default=m.backbone, help="Keras application backbone")
    parser.add_argument("--alpha", type=float, default=m.alpha,
                        help=f"MobileNet width multiplier (default: {PRETRAINED_ALPHA:g} with pretrained weights, "
                             f"{SCRATCH_ALPHA:g} from random initialisation, also when ImageNet weights cannot be had)")
    parser.add_argument("--image-size", type=int, default=m.image_size,
                        help="square size the model resizes the spectrogram to (ImageNet weights: 96..224)")
    parser.add_argument("--resize", choices=RESIZE_METHODS, default=m.resize,
                        help="resizing inside the model: nearest copies whole pixels, so the int8 TFLite file "
                             "resizes exactly as Keras does; bilinear interpolates")
    parser.add_argument("--weights", default=m.weights,
                        help="'imagenet' (random initialisation, with a warning, when unavailable), 'none', "
                             "or a path to a Keras weights file for the backbone")
    parser.add_argument("--window-seconds", type=float, default=m.window_seconds,
                        help="seconds of a clip the model sees at once (0: whole images)")
    parser.add_argument("--steps", type=int, default=d.steps,
                        help="optimizer steps of the head (pretrained) or of the whole network (random initialisation)")
    parser.add_argument("--eval-every", type=int, default=d.eval_every,
                        help="optimizer steps between validations (one row of history.csv each)")
    parser.add_argument("--fine-tune-steps", type=int, default=d.fine_tune_steps,
                        help="optimizer steps with the top of a pretrained base unfrozen (0: skip)")
    parser.add_argument("--fine-tune-layers", type=int, default=d.fine_tune_layers,
                        help="number of top base layers to unfreeze when fine-tuning (0: the whole base)")
    parser.add_argument("--qat-steps", type=int, default=d.qat_steps,
                        help="last phase: quantisation-aware fine-tuning, so the int8 TFLite file answers as the "
                             "model does (0: skip)")
    parser.add_argument("--batch-size", type=int, default=d.batch_size, help="images per training step")
    parser.add_argument("--learning-rate", type=float, default=d.learning_rate,
                        help="Adam learning rate of the first phase")
    parser.add_argument("--fine-tune-learning-rate", type=float, default=d.fine_tune_learning_rate,
                        help="Adam learning rate while fine-tuning")
    parser.add_argument("--lr-schedule", choices=LR_SCHEDULES, default=d.lr_schedule,
                        help="learning rate over each phase: half-cosine decay to 2%% of its start, or constant")
    parser.add_argument("--seed", type=int, default=d.seed, help="seed for the split, augmentation and weights")
    parser.add_argument("--test-ids", nargs="+", default=[], metavar="ID",
                        help="machine ids (id_06, or fan/id_06) held out as the test split")
    parser.add_argument("--val-fraction", type=float, default=d.val_fraction, help="share of clips for validation")
    parser.add_argument("--test-fraction", type=float, default=d.test_fraction,
                        help="share of clips for the test split (ignored with --test-ids)")
    parser.add_argument("--patience", type=int, default=d.patience,
                        help="validations without validation-loss improvement before a phase stops (never in "
                             "its first third)")
    parser.add_argument("--no-augment", action="store_true", help="train without augmentation")
    parser.add_argument("--keep-failed", action="store_true",
                        help="keep the run folder of a model that did not learn (no better than chance on the "
                             "validation split); the command still fails")
    parser.add_argument("--no-learning-check", action="store_true",
                        help="skip the check against chance on the validation split (for plumbing tests, or a "
                             "validation split known to be unrepresentative)")
    parser.add_argument("--devices", default=DistributeSettings.devices, metavar="N|all",
                        help="train on N devices with tf.distribute.MirroredStrategy (GPUs; without GPUs the CPU is "
                             "split into N logical devices); --batch-size is per device and the learning rates "
                             "scale with the number of devices. With TF_CONFIG set, the cluster it describes trains "
                             "(MultiWorkerMirroredStrategy) and worker 0 writes the run")
    parser.add_argument("--mixed-precision", action="store_true",
                        help="train in mixed_float16 (GPUs only; the softmax head stays float32)")
    parser.add_argument("--no-progress", action="store_true",
                        help="one line per validation instead of progress bars (the default when the output is "
                             "not a terminal, e.g. a log file)")


def main(args) -> int:
    settings = TrainSettings(
        task=args.task, steps=args.steps, eval_every=args.eval_every, fine_tune_steps=args.fine_tune_steps,
        qat_steps=args.qat_steps,
        fine_tune_layers=args.fine_tune_layers, batch_size=args.batch_size, learning_rate=args.learning_rate,
        fine_tune_learning_rate=args.fine_tune_learning_rate, lr_schedule=args.lr_schedule, patience=args.patience,
        seed=args.seed,
        val_fraction=args.val_fraction, test_fraction=args.test_fraction, test_ids=tuple(args.test_ids),
        augment=AugmentSettings.off() if args.no_augment else AugmentSettings(),
        check_learning=not args.no_learning_check, max_fpr=args.max_fpr, scorer=args.scorer)
    model_settings = ModelSettings(backbone=args.backbone, alpha=args.alpha, image_size=args.image_size,
                                   weights=args.weights, resize=args.resize,
                                   window_seconds=args.window_seconds or None, embedding=args.embedding)
    distribute = DistributeSettings(devices=args.devices, mixed_precision=args.mixed_precision)
    run = train(args.images, args.out, settings=settings, model_settings=model_settings, distribute=distribute,
                name=args.name, progress=not args.no_progress and sys.stdout.isatty(), keep_failed=args.keep_failed)
    if run is None:
        print("this worker's part is done; the chief (worker 0) wrote the run")
        return 0
    metrics = load_config(run).get("metrics", {})
    for split in ("val", "test"):
        if "overall" in metrics.get(split, {}):
            print(format_metrics(split, metrics[split]))
        elif split in metrics:
            print(f"{split}: {metrics[split]['unscored']} clips of machines without normal references, not scored "
                  "(enroll their normal recordings with 'spectro enroll')")
    print(f"run: {run}")
    return 0
