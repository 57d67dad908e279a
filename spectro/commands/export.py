"""``spectro export``: TFLite files of a run, verified (:func:`spectro.export.tflite.export_run`)."""

from __future__ import annotations

from pathlib import Path

from spectro.errors import SpectroError
from spectro.export.tflite import BOUNDS, QUANTIZE_MODES, ExportResult, ExportSettings, export_run
from spectro.paths import MODELS_DIR
from spectro.runs import LATEST, MODEL_NAME, TFLITE_NAMES

HELP = ("Export a trained run to TensorFlow Lite for edge devices and verify the result. --quantize none "
        "writes a float32 model.tflite, dynamic a dynamic-range model_dynamic.tflite (int8 weights), int8 a "
        "full-integer model_int8.tflite (uint8 input and output, calibrated on the run's training images, "
        "biases corrected for the mean shift of rounding the weights to int8); "
        "several modes may be given at once. Only builtin TFLite ops are used (no Flex ops). Each file is "
        "then checked against the Keras model on the run's test split: top-1 agreement (float32 >= 99.5%, "
        "dynamic >= 99%, int8 >= 98%), anomaly AUC loss (float32 <= 0.005, dynamic and int8 <= 0.01), file "
        "size and median single-image latency on one thread; a file that misses a bound is not written and "
        "the command fails, unless --no-verify. The figures are stored under 'export' in the config.json "
        "beside the files. --out DIR writes the model with labels.json and config.json (features, threshold) into "
        "DIR, self-contained for a device.")


def format_table(results: list[ExportResult]) -> str:
    """A small plain-text table of the figures, one row per mode."""
    head = ("mode", "file", "size", "top-1 agree", "AUC keras", "AUC tflite", "AUC loss", "max |dp|",
            "latency 1 thr", "verdict")
    rows = [head]

    def auc(value):
        return "n/a" if value is None else f"{value:.4f}"

    for r in results:
        v = r.verification
        name = r.path.name if r.path else f"{TFLITE_NAMES[r.mode]} (not written)"
        if v is None:
            size = f"{r.path.stat().st_size / 1e6:.2f} MB" if r.path else "-"
            rows.append((r.mode, name, size, "-", "-", "-", "-", "-", "-", "not verified"))
            continue
        bounds = BOUNDS[r.mode]
        loss = "n/a" if v.auc_loss is None else f"{v.auc_loss:+.4f}"
        enforced = "<=" if v.auc_enforced(bounds) else "(not enforced, too few pairs)"
        rows.append((r.mode, name, f"{v.size_bytes / 1e6:.2f} MB ({v.size_bytes / v.keras_size_bytes:.0%} of .keras)",
                     f"{v.agreement:.1%} ({round(v.agreement * v.n_images)}/{v.n_images}) "
                     f">= {bounds.min_agreement:.1%}",
                     auc(v.keras_auc), auc(v.tflite_auc),
                     f"{loss} <= {bounds.max_auc_loss}" if v.auc_enforced(bounds) or v.auc_loss is None
                     else f"{loss} {enforced}",
                     f"{v.max_prob_diff:.4f}", f"{v.latency_ms:.2f} ms", "FAIL" if r.failures else "ok"))
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(head))]
    lines = ["  ".join(str(cell).ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def add_arguments(parser) -> None:
    parser.add_argument("run", nargs="?", default=str(MODELS_DIR / LATEST), metavar="RUN",
                        help="run folder to export: its model.keras is converted (classify and serve use a .tflite "
                             "file only when it is named, e.g. RUN/model_int8.tflite)")
    parser.add_argument("--quantize", nargs="+", choices=QUANTIZE_MODES, default=["int8"],
                        help="none: float32 model.tflite; dynamic: model_dynamic.tflite; int8: full-integer "
                             "model_int8.tflite with uint8 input/output; several at once share one model load")
    parser.add_argument("--out", type=Path, default=None, metavar="DIR",
                        help="write the model(s) with labels.json and config.json into DIR; None: into the run folder")
    parser.add_argument("--representative", type=int, default=ExportSettings.representative, metavar="N",
                        help="training images used to calibrate int8 quantisation")
    parser.add_argument("--no-bias-correction", action="store_true",
                        help="int8: convert the weights as they are, without correcting the biases for the mean "
                             "shift that rounding the weights to int8 causes")
    parser.add_argument("--no-verify", action="store_true",
                        help="skip the checks against the Keras model on the test split (and their bounds)")


def main(args) -> int:
    settings = ExportSettings(quantize=tuple(dict.fromkeys(args.quantize)), representative=args.representative,
                              verify=not args.no_verify, bias_correction=not args.no_bias_correction)
    results = export_run(args.run, settings, out=args.out)
    split = next((r.verification.split for r in results if r.verification), None)
    if split:
        n = next(r.verification.n_images for r in results if r.verification)
        print(f"verified on the {split} split ({n} images) against {MODEL_NAME}; latency: median single image, 1 "
              f"thread")
    print(format_table(results))
    for r in results:
        if r.path:
            print(f"wrote {r.path}")
    failed = [r for r in results if r.failures]
    if failed:
        detail = "; ".join(f"{r.mode}: {', '.join(r.failures)}" for r in failed)
        raise SpectroError(f"export missed its bounds, file(s) not written ({detail}); "
                           "rerun with --no-verify to write them anyway, or export another mode "
                           "(--quantize none: float32)")
    return 0
