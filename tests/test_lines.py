"""The rest-frame line list."""
import numpy as np

from mtopnet.lines import LINES, air_to_vacuum, line_waves, lines_as_records, lines_from_records


def test_list_spans_lya_to_hei_and_is_sorted():
    waves = line_waves()
    assert 40 <= len(LINES) <= 50
    assert np.all(np.diff(waves) > 0)
    assert waves[0] == 1215.67
    assert any(line.name == "HeI_10833" for line in LINES)
    assert {line.kind for line in LINES} == {"emission", "absorption"}


def test_vacuum_wavelengths_match_air_values():
    by_name = {line.name: line.wave for line in LINES}
    air = {"Halpha": 6562.80, "[OIII]_5008": 5006.84, "Hbeta": 4861.33, "[NII]_6585": 6583.45,
           "[SIII]_9533": 9530.6, "CaII_K": 3933.66, "CaII_8544": 8542.09, "Pa_beta": 12818.08}
    for name, a in air.items():
        assert abs(by_name[name] - air_to_vacuum(a)) < 0.05, name


def test_records_round_trip():
    assert lines_from_records(lines_as_records()) == LINES
