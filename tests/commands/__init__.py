"""One test module per command module (``spectro/commands/<name>.py`` -> ``test_<name>.py``).

A package, so that ``test_classify.py`` here and ``tests/inference/test_classify.py`` can share a name.
"""
