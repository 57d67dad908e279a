"""The one error type spectro raises for bad input, and its warning category."""


class SpectroError(Exception):
    """Bad input or a failed step, with a one-line message that says what was expected and found.

    The CLI prints ``error: <message>`` and exits with status 2; it never shows a traceback for it.
    """


class SpectroWarning(UserWarning):
    """A condition spectro can work around; the message says how to silence it."""
