"""Windows: their length in frames, where they start, cutting clips into them and pooling their probabilities."""

from __future__ import annotations

import numpy as np
import pytest

from spectro.errors import SpectroError, SpectroWarning
from spectro.features.settings import FeatureSettings
from spectro.model.windows import cut, pool, predict_pooled, window_columns, window_frames, window_starts


def test_window_frames_counts_librosa_frames_of_the_window():
    s = FeatureSettings()  # 16 kHz, hop 512
    assert window_frames(s, 1.0, 313) == 1 + 16000 // 512 == 32
    assert window_frames(s, 2.0, 313) == 1 + 32000 // 512 == 63
    assert window_frames(s, None, 313) == 313  # no window: the whole image
    assert window_frames(s, 10.0, 313) == 313  # a 10 s clip is 313 frames wide
    with pytest.warns(SpectroWarning, match=r"12 s window is longer than the images \(9.98 s\): the model takes whole"):
        assert window_frames(s, 12.0, 313) == 313
    with pytest.raises(SpectroError, match="window must be > 0 seconds"):
        window_frames(s, 0.0, 313)


def test_window_starts_hop_and_align_the_last_window_to_the_end():
    assert window_starts(10, 4, 2) == [0, 2, 4, 6]
    assert window_starts(11, 4, 2) == [0, 2, 4, 6, 7]  # the last one moved back to end at 11
    assert window_starts(4, 4, 2) == [0] and window_starts(3, 4, 2) == [0]
    assert window_columns(11, 4) == [0, 2, 4, 6, 7]  # scoring: hop half a window
    assert window_columns(11, 4, per_image=3) == [0, 4, 7]  # evenly spread, both ends kept
    assert window_columns(11, None) == [0] and window_columns(4, 4) == [0]


def test_cut_and_pool_against_a_hand_computed_example():
    a = np.arange(2 * 8).reshape(2, 8)  # 8 frames: windows at 0, 2, 4
    b = 100 + np.arange(2 * 6).reshape(2, 6)  # 6 frames: windows at 0, 2
    windows, owners = cut([a, b], 4)
    assert owners.tolist() == [0, 0, 0, 1, 1]
    expected = [a[:, 0:4], a[:, 2:6], a[:, 4:8], b[:, 0:4], b[:, 2:6]]
    for got, want in zip(windows, expected):
        np.testing.assert_array_equal(got, want)
    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.2, 0.8], [0.0, 1.0]])
    np.testing.assert_allclose(pool(probs, owners, 2), [[0.6, 0.4], [0.1, 0.9]], rtol=1e-6)
    with pytest.raises(SpectroError, match="narrower than the model's window"):
        cut([a[:, :3]], 4)


def test_predict_pooled_scores_each_clip_by_the_mean_of_its_windows():
    def mean_pixel(windows):  # a "model": probability of class 1 = mean pixel / 255
        p = windows.reshape(len(windows), -1).mean(axis=1) / 255.0
        return np.stack([1 - p, p], axis=1)

    rng = np.random.default_rng(0)
    clips = rng.integers(0, 256, size=(3, 4, 10), dtype=np.uint8)
    got = predict_pooled(mean_pixel, clips, 4)  # windows at 0, 2, 4, 6 of every clip
    want = [np.mean([clip[:, s:s + 4].mean() / 255.0 for s in (0, 2, 4, 6)]) for clip in clips]
    np.testing.assert_allclose(got[:, 1], want, rtol=1e-5)
