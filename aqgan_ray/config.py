"""``QuantConfig``: the one object passed between search methods, evaluators and cost models."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from aqgan_ray.errors import UserError

DEFAULT_BIT_CHOICES: tuple[int, ...] = (2, 3, 4, 5, 6, 7, 8)
# Why 2..16: a signed 1-bit symmetric quantizer has no non-zero level, so weights need >= 2 bits;
# above 16 bits linear quantization is indistinguishable from float for these models.
MIN_BITS, MAX_BITS = 2, 16
# HAQ's search space (``_keep_first_last_layer`` in mit-han-lab/haq): the first layer's weights
# and the last layer's weights and input stay at 8 bits, and the image entering the first layer
# is not quantized at all (it is 8-bit already, so hardware models price it at 8 bits).
PINNED_BITS = 8


def pin_first_last(w_bits: np.ndarray, a_bits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Copies of ``[..., layers]`` bit arrays with the first and last layers at ``PINNED_BITS``."""
    w, a = np.array(w_bits, copy=True), np.array(a_bits, copy=True)
    for bits in (w, a):
        bits[..., 0] = bits[..., -1] = PINNED_BITS
    return w, a


@dataclass(frozen=True)
class QuantConfig:
    """Per-layer weight and activation bitwidths, keyed by layer name (layer-table order).

    ``a_bits[i]`` is the precision of the activation *entering* layer i (as in HAQ), so the
    layer's multiply-accumulates are ``w_bits[i] x a_bits[i]``.
    """

    layers: tuple[str, ...]
    w_bits: tuple[int, ...]
    a_bits: tuple[int, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", tuple(str(name) for name in self.layers))
        n = len(self.layers)
        if len(self.w_bits) != n or len(self.a_bits) != n:
            raise UserError(
                f"config has {len(self.w_bits)} weight and {len(self.a_bits)} activation "
                f"bitwidths but the model has {n} quantizable layers; give one entry per layer"
            )
        object.__setattr__(self, "w_bits", tuple(int(b) for b in self.w_bits))
        object.__setattr__(self, "a_bits", tuple(int(b) for b in self.a_bits))

    @classmethod
    def uniform(cls, layers: Sequence[str], bits: int, a_bits: int | None = None) -> QuantConfig:
        n = len(layers)
        return cls(tuple(layers), (bits,) * n, ((a_bits if a_bits is not None else bits),) * n)

    @property
    def hash(self) -> str:
        """Stable content hash: same layers and bits give the same hash on every machine."""
        payload = json.dumps(
            {"layers": list(self.layers), "w_bits": list(self.w_bits), "a_bits": list(self.a_bits)},
            separators=(",", ":"),
            allow_nan=False,
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def __len__(self) -> int:
        return len(self.layers)

    def validate(self, choices: Sequence[int]) -> QuantConfig:
        """Raise a UserError naming the first bitwidth that is not an allowed choice."""
        allowed = set(choices)
        for kind, bits in (("w_bits", self.w_bits), ("a_bits", self.a_bits)):
            for i, b in enumerate(bits):
                if b not in allowed:
                    raise UserError(
                        f"{kind}[{i}] = {b} (layer {self.layers[i]}) is not one of the allowed "
                        f"bitwidths {sorted(allowed)}"
                    )
        return self

    def pinned(self) -> QuantConfig:
        """This config in HAQ's search space (``pin_first_last``)."""
        w, a = pin_first_last(np.asarray(self.w_bits), np.asarray(self.a_bits))
        return QuantConfig(self.layers, tuple(w.tolist()), tuple(a.tolist()))

    def check_pinned(self) -> QuantConfig:
        """Raise a UserError unless the first and last layers are at ``PINNED_BITS``."""
        if self != self.pinned():
            raise UserError(
                f"the config sets w_bits[0]={self.w_bits[0]}, a_bits[0]={self.a_bits[0]}, "
                f"w_bits[-1]={self.w_bits[-1]}, a_bits[-1]={self.a_bits[-1]}, but [quant] "
                f"keep_first_last keeps the first and last layers at {PINNED_BITS} bits (as HAQ); "
                "set them to 8 or set keep_first_last = false"
            )
        return self

    def to_dict(self) -> dict:
        return {"w_bits": list(self.w_bits), "a_bits": list(self.a_bits)}


def _is_int(value: object) -> bool:
    """A true integer: a bool is not a bitwidth, and a float (2.7) would be truncated silently."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def validate_choices(choices: Sequence[int]) -> tuple[int, ...]:
    """The sorted distinct bit choices, refused with one line unless integers within
    ``MIN_BITS..MAX_BITS``."""
    if not all(_is_int(b) for b in choices):
        raise UserError(
            f"bit choices {list(choices)} must be integers within {MIN_BITS}..{MAX_BITS}, "
            "e.g. [2, 4, 8]"
        )
    out = tuple(sorted({int(b) for b in choices}))
    if not out or out[0] < MIN_BITS or out[-1] > MAX_BITS:
        raise UserError(
            f"bit choices {list(choices)} must be a non-empty set within {MIN_BITS}..{MAX_BITS}"
        )
    return out


def parse_bits(text: str, layers: Sequence[str]) -> QuantConfig:
    """Parse ``--bits``: a JSON object ``{"w_bits": [...], "a_bits": [...]}`` or a file path."""
    source = "--bits"
    stripped = text.strip()
    if not stripped.startswith("{"):
        path = Path(text)
        if not is_existing_file(path):
            raise UserError(f"--bits {text!r} is neither a JSON object nor an existing file")
        stripped, source = read_utf8(path, "--bits"), str(path)
    try:
        obj = json.loads(stripped)
    except json.JSONDecodeError as exc:
        raise UserError(f"{source} is not valid JSON ({exc.msg} at char {exc.pos})") from None
    if not isinstance(obj, Mapping) or not {"w_bits", "a_bits"} <= obj.keys():
        raise UserError(f'{source} must be an object {{"w_bits": [...], "a_bits": [...]}}')
    w, a = obj["w_bits"], obj["a_bits"]
    for key, val in (("w_bits", w), ("a_bits", a)):
        if not isinstance(val, list) or not all(_is_int(b) for b in val):
            raise UserError(f"{source}: {key} must be a list of integers, one per layer")
    return QuantConfig(tuple(layers), tuple(w), tuple(a))


def is_existing_file(path: Path) -> bool:
    """``path.is_file()``, but False for a text that cannot even be a path (so that the caller
    says "no such file" in one line rather than a traceback)."""
    try:
        return path.is_file()
    except (OSError, ValueError):  # a name too long for the file system, a NUL byte
        return False


def read_utf8(path: Path, option: str) -> str:
    """A text file given on the command line (``--bits``, ``--config``): unreadable or not
    UTF-8 is one line naming the file, not a traceback."""
    try:
        return Path(path).read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(
            f"{option} {path} is not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset "
            f"{exc.start}); save it as UTF-8"
        ) from None
    except OSError as exc:
        raise UserError(f"{option} {path} cannot be read ({exc.strerror or exc})") from None
