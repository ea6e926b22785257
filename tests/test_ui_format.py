import math

import pytest

from ui.format import human_bytes_mb, human_count, human_duration, progress_fraction


@pytest.mark.parametrize("n, text", [
    (0, "0"), (950, "950"), (254_016, "254 k"), (10_745_856, "10.7 M"), (1_200_000_000, "1.2 B"),
    (124_439_808, "124 M"), (999_950, "1 M"), (3.2e12, "3.2 T"), (None, "—"), (math.nan, "—"),
])
def test_human_count(n, text):
    assert human_count(n) == text


@pytest.mark.parametrize("s, text", [
    (42, "42 s"), (4.25, "4.2 s"), (200, "3 min 20 s"), (65, "1 min 05 s"), (3900, "1 h 05 min"),
    (3599.7, "1 h 00 min"), (183_600, "2 d 03 h"), (None, "—"), (math.nan, "—"), (-1, "—"),
])
def test_human_duration(s, text):
    assert human_duration(s) == text


@pytest.mark.parametrize("mb, text", [
    (0.41, "0.41 MB"), (5.3, "5.3 MB"), (254.4, "254 MB"), (1421.4, "1.4 GB"),
    (2.2 * 1024**2, "2.2 TB"), (None, "—"),
])
def test_human_bytes_mb(mb, text):
    assert human_bytes_mb(mb) == text


def test_progress_fraction():
    assert progress_fraction(250, 500) == 0.5
    assert progress_fraction(700, 500) == 1.0
    assert progress_fraction(-3, 500) == 0.0
    assert progress_fraction(None, 500) == 0.0 and progress_fraction(5, 0) == 0.0
