"""Placeholder for spectro train (issue 4); replaced by the real implementation."""

HELP = "not implemented yet (issue 4)"


def add_arguments(parser):
    pass


def main(args):
    from spectro.errors import SpectroError

    raise SpectroError("not implemented yet (issue 4)")
