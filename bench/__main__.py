"""``python -m bench`` (``make bench``): run the benchmark sections and write one Markdown report.

Without ``--only`` and ``--quick`` every section runs and the report is ``docs/benchmarks.md`` (committed), written
whole by this one run: one date, one commit, one machine, one command at the top. ``--only`` and ``--quick`` runs
write to a scratch file (``reports/bench/benchmarks.md`` unless ``--out`` says otherwise), never merged into the
committed one.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
import traceback
from pathlib import Path

from bench import SECTIONS, section
from bench.common import ROOT, BenchContext, header

PUBLISHED = ROOT / "docs" / "benchmarks.md"
WORK = ROOT / "reports" / "bench"
SCRATCH = WORK / "benchmarks.md"
# environment variables the sections read (sizes, folds, seeds): a report's command line shows the ones set
ENV_PREFIX = "SPECTRO_BENCH_"


def parser() -> argparse.ArgumentParser:
    """The command line of ``python -m bench``."""
    p = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__.splitlines()[0].replace("``", "`"),
        epilog=f"sections, in the order they run: {' '.join(SECTIONS)}. Environment variables {ENV_PREFIX}* set "
               "sizes, folds and seeds (see each section's module docstring) and are written into the report's "
               "command line.")
    p.add_argument("--only", nargs="+", choices=SECTIONS, metavar="SECTION",
                   help="run only these sections (in the order listed below); the report then holds those alone and "
                        f"goes to --out's scratch default, not to {PUBLISHED.relative_to(ROOT)}")
    p.add_argument("--quick", action="store_true",
                   help="tiny sizes and steps: a smoke run whose figures mean nothing (also written to the scratch "
                        "default)")
    p.add_argument("--out", type=Path,
                   help=f"the report to write (default: {PUBLISHED.relative_to(ROOT)} for a full run, "
                        f"{SCRATCH.relative_to(ROOT)} with --only or --quick)")
    p.add_argument("--work", type=Path, default=WORK,
                   help=f"scratch folder for the data sets, images and runs the sections make (default: "
                        f"{WORK.relative_to(ROOT)})")
    p.add_argument("--synthetic-run", type=Path,
                   help="with --only export, serve or normal: the run folder the train section made "
                        "(normal: its supervised comparison, a run trained on the built-in set)")
    p.add_argument("--pretrained-run", type=Path,
                   help="with --only export: the ImageNet-initialised run folder the train section made")
    return p


def command_line(argv: list[str], environ=os.environ) -> str:
    """The command as a reader would re-run it: the ``SPECTRO_BENCH_*`` variables set, then ``python -m bench``."""
    env = [f"{k}={shlex.quote(v)}" for k, v in sorted(environ.items()) if k.startswith(ENV_PREFIX)]
    return " ".join([*env, "python -m bench", *map(shlex.quote, argv)])


def report_path(args: argparse.Namespace) -> Path:
    """Where the report goes: ``--out``, else the committed file for a full run and the scratch file for a partial
    (``--only``) or smoke (``--quick``) one, so neither can replace the committed figures by accident."""
    if args.out is not None:
        return args.out
    return SCRATCH if args.only or args.quick else PUBLISHED


def main(argv: list[str] | None = None) -> int:
    """Run the sections chosen by ``argv`` in order and write the report; 1 when a section failed (the others still
    run and the report says which failed and why), 0 otherwise."""
    argv = sys.argv[1:] if argv is None else list(argv)
    p = parser()
    args = p.parse_args(argv)
    for option, path in (("--synthetic-run", args.synthetic_run), ("--pretrained-run", args.pretrained_run)):
        if path is not None and not path.is_dir():
            p.error(f"{option} expects a run folder; found no folder at {path}")
    out = report_path(args)

    from spectro import quiet

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    quiet.install()  # TensorFlow's C++ start-up lines stay out of the log, as they stay off the CLI's terminal
    ctx = BenchContext(root=ROOT, work=args.work, shared=ROOT.parent / "shared", quick=args.quick)
    if args.synthetic_run:
        ctx.state["synthetic_run"] = args.synthetic_run.resolve()
    if args.pretrained_run:
        ctx.state["pretrained_run"] = args.pretrained_run.resolve()
    ctx.work.mkdir(parents=True, exist_ok=True)
    out.parent.mkdir(parents=True, exist_ok=True)

    parts = header(ctx, command_line(argv))
    failed = []
    for name in [s for s in SECTIONS if not args.only or s in args.only]:
        module = section(name)
        print(f"== {module.TITLE}", flush=True)
        started = time.perf_counter()
        try:
            body = module.run(ctx)
        except Exception:  # a broken section is reported, the others still run
            failed.append(name)
            body = "**section failed:**\n\n```\n" + traceback.format_exc() + "```\n"
            print(body, file=sys.stderr)
        parts += [f"## {module.TITLE}", "", body.strip(), "", f"_section time: {time.perf_counter() - started:.0f} s_",
                  ""]
        out.write_text("\n".join(parts))  # after every section: a long run's finished sections are readable
    print(f"wrote {out}" + (f"; failed sections: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
