"""AQGAN's checkpoint: the networks, their hyperparameters and what they were trained for, in a
file that is safe to load (``torch.load(weights_only=True)``: tensors, numbers, strings, lists
and dicts only), and refused with one line when it belongs to another model or setup."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aqgan_ray.aqgan import model as gan
from aqgan_ray.aqgan.data import EVIDENCE_SOURCES, as_data, indices_of
from aqgan_ray.atomic import write_atomic
from aqgan_ray.config import PINNED_BITS, QuantConfig
from aqgan_ray.errors import UserError
from aqgan_ray.layers import Layer

# Never reused: 1 and 3 held the additive predictor, 2 the sensitivity-profile predictor that was
# taken out again, 4 adds the residual GP; a checkpoint of any other format is refused, not misread.
FORMAT_VERSION = 4


def model_state(model: gan.TrainedGan, spec: gan.GanSpec) -> dict[str, Any]:
    """The networks and their hyperparameters, as plain tensors and numbers."""
    return {
        "spec": spec.to_dict(),
        "scaler": [model.scaler.lo, model.scaler.hi],
        "generator": model.generator.state_dict(),
        "discriminator": model.discriminator.state_dict(),
        "predictor": model.predictor.state_dict(),
        "residual": model.residual.state_dict(),
    }


def model_from_state(
    state: dict, n_layers: int, bit_values: Sequence[int]
) -> tuple[gan.TrainedGan, gan.GanSpec]:
    known = {f.name for f in fields(gan.GanSpec)}
    spec = gan.GanSpec(**{k: v for k, v in state["spec"].items() if k in known})
    n_choices = len(bit_values)
    members = [
        gan.Predictor(bit_values, n_layers, spec.predictor_hidden)
        for _ in range(spec.predictor_members)
    ]
    model = gan.TrainedGan(
        gan.Generator(n_layers, n_choices, spec.noise_dim, spec.hidden),
        gan.Discriminator(n_layers, n_choices, spec.hidden),
        gan.PredictorEnsemble(members),
        gan.Scaler(*state["scaler"]),
        gan.ResidualGP(*state["residual"]["x"].shape),
        tuple(int(b) for b in bit_values),
    )
    model.generator.load_state_dict(state["generator"])
    model.discriminator.load_state_dict(state["discriminator"])
    model.predictor.load_state_dict(state["predictor"])
    model.residual.load_state_dict(state["residual"])
    for module in (model.generator, model.discriminator, model.predictor, model.residual):
        module.eval()
    return model, spec


def save_checkpoint(
    path: Path,
    model: gan.TrainedGan,
    spec: gan.GanSpec,
    layer_names: Sequence[str],
    bit_choices: Sequence[int],
    eval_key: str,
    metrics: dict[str, Any],
    model_id: str,
    layers: Sequence[Layer] = (),
    keep_first_last: bool = False,
) -> Path:
    """``layers``, the layer table, lets ``read_checkpoint`` price proposals without the
    experiment that trained it (``aqgan_ray.load_generator(path)``); ``keep_first_last``, the
    search space it proposes in."""
    state = {
        "format": FORMAT_VERSION,
        **model_state(model, spec),
        "model_id": model_id,
        "layers": list(layer_names),
        "layer_table": [layer.to_dict() for layer in layers],
        "bit_choices": [int(b) for b in bit_choices],
        "eval_key": eval_key,
        "keep_first_last": bool(keep_first_last),
        "metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float, str))},
    }
    return write_atomic(Path(path), lambda fh: torch.save(state, fh))


@dataclass(frozen=True)
class Loaded:
    model: gan.TrainedGan
    spec: gan.GanSpec
    layer_names: tuple[str, ...]
    bit_choices: tuple[int, ...]
    eval_key: str
    metrics: dict[str, Any]
    model_id: str = ""
    layers: tuple[Layer, ...] = ()  # the layer table, where the checkpoint holds it
    keep_first_last: bool = False  # proposals in HAQ's search space (``config.pin_first_last``)

    def pinned(self, idx: np.ndarray) -> np.ndarray:
        """Choice indices ``[n, L, 2]`` in this checkpoint's search space."""
        if not self.keep_first_last or idx.size == 0:
            return idx
        idx = np.array(idx, copy=True)
        idx[:, 0, :] = idx[:, -1, :] = self.bit_choices.index(PINNED_BITS)
        return idx


def model_id(exp) -> str:
    """What a checkpoint belongs to: architecture, width and dataset."""
    return f"{exp.model.name} width {exp.model.width:g} on {exp.data.name}"


def read_checkpoint(path: Path) -> Loaded:
    """The checkpoint as it is, for whatever model it was trained; refused with one line when
    missing, damaged or of another format."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no AQGAN checkpoint at {path}; run `aqgan-ray train` first")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        version = state["format"]
    except Exception as exc:  # torch raises many types for a damaged file
        raise UserError(
            f"AQGAN checkpoint {path} is unreadable ({type(exc).__name__}); train again"
        ) from None
    if version != FORMAT_VERSION:
        raise UserError(f"AQGAN checkpoint {path} has format {version}; train again")
    names = tuple(state["layers"])
    choices = tuple(int(b) for b in state["bit_choices"])
    model, spec = model_from_state(state, len(names), choices)
    table = tuple(Layer(**row) for row in state.get("layer_table", []))
    return Loaded(
        model, spec, names, choices, state["eval_key"], dict(state["metrics"]),
        str(state.get("model_id", "")), table, bool(state.get("keep_first_last", False)),
    )  # fmt: skip


def load_checkpoint(
    path: Path, layer_names: Sequence[str], bit_choices: Sequence[int], expected_model: str
) -> Loaded:
    """Refuses, with one line, a checkpoint of another model or bit-choice set."""
    loaded = read_checkpoint(path)
    if loaded.model_id != expected_model or loaded.layer_names != tuple(layer_names):
        raise UserError(
            f"AQGAN checkpoint {path} was trained for {loaded.model_id or None}, not "
            f"{expected_model}; train it for this experiment"
        )
    if loaded.bit_choices != tuple(int(b) for b in bit_choices):
        raise UserError(
            f"AQGAN checkpoint {path} was trained for bit choices {list(loaded.bit_choices)}, "
            f"this experiment uses {list(bit_choices)}; train it for this experiment"
        )
    return loaded


def told(loaded: Loaded, configs: Sequence[QuantConfig], val_accs: Sequence[float]) -> Loaded:
    """``loaded`` with these measurements added to its ranker (``TrainedGan.with_evidence``:
    milliseconds; the networks are unchanged)."""
    bits = [(c.w_bits, c.a_bits) for c in configs]
    x = gan.one_hot(torch.from_numpy(indices_of(bits, loaded.bit_choices)), len(loaded.bit_choices))
    model = loaded.model.with_evidence(x, torch.tensor(val_accs, dtype=torch.float32))
    return replace(loaded, model=model)


def with_evidence(loaded: Loaded, rows: Sequence[dict]) -> tuple[Loaded, int]:
    """The checkpoint's ranker told every stored evaluation of its setup that AQGAN paid for
    (``data.EVIDENCE_SOURCES``) and it has not seen (``TrainedGan.with_evidence``), and how
    many that was.

    The checkpoint's residual GP holds the configs it was trained and refined on; evaluations
    made since (``train``'s fidelity verification, ``generate --verify``) stay in the store;
    the baselines' rows are theirs, not AQGAN's evidence. Adding them to the GP's posterior
    costs milliseconds and corrects the ranking where it was checked, so a target asked twice
    is not missed twice the same way. Rows of another setup (``eval_key``) are ignored.
    """
    mine = sorted(
        (
            r
            for r in rows
            if r.get("eval_key") == loaded.eval_key and r.get("source") in EVIDENCE_SOURCES
        ),
        key=lambda r: r["config_hash"],
    )
    if not mine:
        return loaded, 0
    data = as_data(mine, loaded.layer_names, loaded.bit_choices)
    model = loaded.model
    x = gan.one_hot(data.idx, len(loaded.bit_choices))
    before = len(model.residual.x)
    model = model.with_evidence(x, data.acc)
    return replace(loaded, model=model), len(model.residual.x) - before
