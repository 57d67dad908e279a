"""FeatureSettings from dicts and JSON: what a damaged config.json or PNG text chunk gives (one-line errors)."""

from __future__ import annotations

import json

import pytest

from spectro.errors import SpectroError
from spectro.features.settings import FeatureSettings


def test_round_trip_and_settings_written_before_modulation_spectra():
    s = FeatureSettings(n_mels=32, segment_seconds=1.5, fmax=6000.0)
    assert FeatureSettings.from_json(s.to_json()) == s
    old = s.to_dict()
    del old["modulation_hz"]
    assert FeatureSettings.from_dict(old).modulation_hz is None


@pytest.mark.parametrize("data, match", [
    ([1, 2], r"^FeatureSettings must be a JSON object of settings, got list \[1, 2\]$"),
    ("x", r"^FeatureSettings must be a JSON object of settings, got str 'x'$"),
    (None, r"got NoneType None"),
    (3.5, r"got float 3.5"),
    ({"sr": "abc"}, r"^invalid FeatureSettings: sr must be a whole number, got 'abc'$"),
    ({"sr": 16000.0}, r"sr must be a whole number, got 16000.0"),
    ({"sr": True}, r"sr must be a whole number, got True"),
    ({"n_mels": [64]}, r"n_mels must be a whole number, got \[64\]"),
    ({"channel": 0}, r"channel must be text, got 0"),
    ({"power": "2"}, r"power must be a finite number, got '2'"),
    ({"db_max": float("inf")}, r"db_max must be a finite number, got inf"),
    ({"fmax": "8000"}, r"fmax must be a finite number or null, got '8000'"),
    ({"segment_seconds": {}}, r"segment_seconds must be a finite number or null, got \{\}"),
    ({"modulation_hz": 1.5}, r"modulation_hz must be a whole number or null, got 1.5"),
    ({"sr": "a" * 1000}, r"got 'a{30,40}\.\.\.$"),  # a hostile value is cut, the message stays short
    ({"features": "x"}, r"unknown FeatureSettings keys \['features'\]"),
    ({f"k{i}": 1 for i in range(9)}, r"unknown FeatureSettings keys \['k0', .* and 4 more\]"),
    ({"sr": "abc", "n_fft": None}, r"sr must be a whole number, got 'abc'; n_fft must be a whole number, got None"),
    ({"sr": 0}, r"invalid feature settings: sr must be > 0"),
])
def test_from_dict_refuses_what_is_not_settings_in_one_line(data, match):
    with pytest.raises(SpectroError, match=match) as caught:
        FeatureSettings.from_dict(data)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("text, match", [
    ("not json", r"feature settings are not valid JSON: Expecting value"),
    ("[" * 100_000, r"feature settings are not valid JSON"),
    (b"\xff\xfe", r"feature settings are not valid JSON"),
    (None, r"feature settings are not valid JSON"),
    (json.dumps({"sr": "abc"}), r"sr must be a whole number"),
    ("null", r"got NoneType None"),
])
def test_from_json_refuses_what_is_not_settings_in_one_line(text, match):
    with pytest.raises(SpectroError, match=match) as caught:
        FeatureSettings.from_json(text)
    assert "\n" not in str(caught.value)
