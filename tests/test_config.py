from __future__ import annotations

import json

import numpy as np
import pytest

from aqgan_ray.config import QuantConfig, parse_bits, validate_choices
from aqgan_ray.errors import UserError

LAYERS = ("conv1", "fc")


def test_hash_is_stable_and_content_addressed():
    a = QuantConfig(LAYERS, (4, 8), (8, 8))
    b = QuantConfig(list(LAYERS), [4, 8], [8, 8])  # lists and tuples are the same config
    assert a == b and a.hash == b.hash
    # The exact value is part of the on-disk format (stores key rows by it): it must not drift.
    assert a.hash == "fe7398867f1b0098"  # sha256 of the canonical JSON, first 16 hex
    assert QuantConfig(LAYERS, (8, 4), (8, 8)).hash != a.hash
    assert QuantConfig(LAYERS, (4, 8), (8, 4)).hash != a.hash
    assert QuantConfig(("conv2", "fc"), (4, 8), (8, 8)).hash != a.hash


def test_config_is_frozen_and_hashable():
    cfg = QuantConfig.uniform(LAYERS, 6)
    assert cfg.w_bits == (6, 6) and cfg.a_bits == (6, 6)
    with pytest.raises(AttributeError):
        cfg.w_bits = (2, 2)  # type: ignore[misc]
    assert len({cfg, QuantConfig.uniform(LAYERS, 6)}) == 1


def test_wrong_layer_count_is_a_user_error():
    with pytest.raises(UserError, match="2 quantizable layers"):
        QuantConfig(LAYERS, (4, 4, 4), (4, 4))


def test_validate_names_the_bad_bitwidth():
    cfg = QuantConfig(LAYERS, (4, 9), (4, 4))
    with pytest.raises(UserError, match=r"w_bits\[1\] = 9 \(layer fc\)"):
        cfg.validate((2, 3, 4, 5, 6, 7, 8))
    assert QuantConfig(LAYERS, (2, 8), (8, 2)).validate(range(2, 9)).w_bits == (2, 8)


def test_bit_choices_range():
    assert validate_choices([8, 2, 4, 4]) == (2, 4, 8)
    for bad in ([], [1, 2], [2, 17]):
        with pytest.raises(UserError):
            validate_choices(bad)
    # not truncated to 2, not parsed from text, not a bool for 1
    for bad in ([2.7, 4], ["4", 8], [True, 8]):
        with pytest.raises(UserError, match="must be integers"):
            validate_choices(bad)
    assert validate_choices([np.int64(4), 8]) == (4, 8)


def test_parse_bits_from_json_and_file(tmp_path):
    text = json.dumps({"w_bits": [2, 8], "a_bits": [4, 6]})
    assert parse_bits(text, LAYERS) == QuantConfig(LAYERS, (2, 8), (4, 6))
    path = tmp_path / "cfg.json"
    path.write_text(text)
    assert parse_bits(str(path), LAYERS).hash == parse_bits(text, LAYERS).hash


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "not valid JSON"),
        ('{"w_bits": [2, 8]}', "must be an object"),
        ('{"w_bits": [2, "8"], "a_bits": [4, 4]}', "list of integers"),
        ('{"w_bits": [2], "a_bits": [4]}', "quantizable layers"),
        ("/no/such/file.json", "neither a JSON object nor an existing file"),
        ('{"w_bits": [2, true], "a_bits": [4, 4]}', "list of integers"),
        ('{"w_bits": [2, 8.0], "a_bits": [4, 4]}', "list of integers"),
        ("x" * 5000, "neither a JSON object nor an existing file"),  # too long for a path
    ],
)
def test_parse_bits_errors(text, message):
    with pytest.raises(UserError, match=message):
        parse_bits(text, LAYERS)


def test_parse_bits_file_that_is_not_utf8(tmp_path):
    path = tmp_path / "cfg.json"
    path.write_bytes(b'{"w_bits": [2, 8], "a_bits": [4, 6]}\xff')
    with pytest.raises(UserError, match=r"--bits .*cfg.json is not UTF-8 text \(byte 0xff"):
        parse_bits(str(path), LAYERS)
