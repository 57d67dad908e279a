"""Placeholder for spectro predict (issue 5); replaced by the real implementation."""

HELP = "not implemented yet (issue 5)"


def add_arguments(parser):
    pass


def main(args):
    from spectro.errors import SpectroError

    raise SpectroError("not implemented yet (issue 5)")
