"""One thin module per ``spectro`` command: ``HELP``, ``add_arguments(parser)`` and ``main(args) -> int``.

A command parses its arguments, calls one library function and prints; no command imports another.
"""
