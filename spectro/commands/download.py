"""``spectro download``: MIMII archives from zenodo (:func:`spectro.data.download.download`)."""

from __future__ import annotations

import re
from pathlib import Path

from spectro.data.download import API_URL, BASE_URL, MACHINES, SNRS, download, normalise_snr
from spectro.paths import RAW_DIR

HELP = ("Download MIMII archives (<snr>_dB_<machine>.zip, several GB each) from zenodo record 3384388, "
        "resuming interrupted downloads, verify their published MD5 checksums and extract them into --out "
        "(<out>/<snr>_dB_<machine>/<machine>/id_XX/<label>/*.wav). Archives already downloaded and verified are "
        "skipped. Needs internet access; offline it fails at once and says how to get the data by hand.")


def add_arguments(parser) -> None:
    # let "-6dB" be a value, not an option (argparse only does that for plain negative numbers)
    if hasattr(parser, "_negative_number_matcher"):
        parser._negative_number_matcher = re.compile(r"^-\d+(?:\.\d+)?(?:_?dB)?$|^-\d*\.\d+$")
    parser.add_argument("--machines", nargs="+", choices=MACHINES, default=list(MACHINES), metavar="MACHINE",
                        help=f"machine types ({' '.join(MACHINES)})")
    parser.add_argument("--snrs", nargs="+", default=list(SNRS), metavar="SNR",
                        help=f"signal-to-noise ratios ({' '.join(SNRS)})")
    parser.add_argument("--out", type=Path, default=RAW_DIR, help="folder to extract into")
    parser.add_argument("--base-url", default=BASE_URL, help="where the archives are (<base-url>/<name>?download=1)")
    parser.add_argument("--api-url", default=API_URL,
                        help="zenodo records API, asked for checksums that spectro does not know")
    parser.add_argument("--keep-zip", action="store_true", help="keep the verified archives in <out>/.downloads")
    parser.add_argument("--timeout", type=float, default=30.0, help="network timeout in seconds")
    parser.add_argument("--retries", type=int, default=5, help="resume attempts after a cut connection")


def main(args) -> int:
    snrs = [normalise_snr(s) for s in args.snrs]
    dirs = download(args.machines, snrs, out=args.out, base_url=args.base_url, api_url=args.api_url,
                    keep_zip=args.keep_zip, timeout=args.timeout, retries=args.retries)
    print(f"{len(dirs)} archive(s) ready under {args.out}")
    return 0
