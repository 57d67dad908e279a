"""The one place a score is made: fitted views of a machine's normal sound (the CNN's, the clip's mel statistics,
its modulation spectrum), how a run combines them into one anomaly score, its threshold, and the known-machine
check (no TensorFlow here but in :mod:`spectro.scoring.normal`'s embedding calls)."""
