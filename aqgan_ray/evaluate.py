"""The evaluator: accuracy of one QuantConfig, the same code in-process and in Ray actors.

It holds one quantized model and the images it scores on; a config costs one pass over the
validation split (plus the optional fine-tune). The test split is scored only when asked, for
final reporting: searches never see it.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from aqgan_ray.config import QuantConfig
from aqgan_ray.data import Splits, normalize
from aqgan_ray.prepare import Prepared
from aqgan_ray.quant import QuantizedModel
from aqgan_ray.settings import EvalSpec


@dataclass(frozen=True)
class EvalResult:
    config_hash: str
    val_acc: float
    test_acc: float | None
    eval_s: float  # wall seconds this evaluation took (fine-tune included)


class Evaluator:
    """Scores configs on fixed images with one model that is never copied per config."""

    def __init__(
        self,
        prepared: Prepared,
        val: tuple[Tensor, Tensor],
        test: tuple[Tensor, Tensor] | None = None,
        train: tuple[Tensor, Tensor] | None = None,
        spec: EvalSpec | None = None,
        compile: bool | None = None,
        device: str | torch.device = "cpu",
    ):
        """``compile`` (default: the preset's ``eval.compile``) pays a one-off TorchInductor
        compilation, worth it for a process that evaluates many configs, not for one.
        Images stay on the CPU as uint8 and move to ``device`` one batch at a time."""
        self.prepared = prepared
        self.device = torch.device(device)
        if self.device.type == "cuda":
            # Full float32 on the GPU. With TF32 (PyTorch's default for cuDNN convolutions) a
            # value near a quantization step rounds the other way and predictions flip: 16 of
            # 2000 smoke validation images on an H200; with it off, 0 on the same six configs.
            # GPU and CPU evaluations then share one store.
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cuda.matmul.allow_tf32 = False
        self.spec = spec if spec is not None else prepared.experiment.eval
        self.compiled = self.spec.compile if compile is None else compile
        if self.spec.finetune_steps > 0 and train is None:
            raise ValueError("fine-tuning needs training images")
        self.val, self.test, self.train = val, test, train
        model = prepared.folded_model().to(self.device, memory_format=torch.channels_last)
        keep = prepared.experiment.quant.keep_first_last
        self.qmodel = QuantizedModel(
            model, prepared.layers, prepared.calibration, self.compiled, keep_first_last=keep
        )

    @classmethod
    def from_splits(
        cls, prepared: Prepared, splits: Splits, with_test: bool = True, compile: bool | None = None
    ) -> Evaluator:
        finetune = prepared.experiment.eval.finetune_steps > 0
        return cls(
            prepared,
            val=(splits.val_x, splits.val_y),
            test=(splits.test_x, splits.test_y) if with_test else None,
            train=(splits.train_x, splits.train_y) if finetune else None,
            compile=compile,
        )

    @torch.no_grad()
    def accuracy(self, images: Tensor, labels: Tensor) -> float:
        """Top-1 accuracy of the model in its current (quantized or float) state."""
        correct = 0
        bs = self.spec.batch_size
        mean, std = self.prepared.mean, self.prepared.std
        for start in range(0, len(images), bs):
            x = normalize(images[start : start + bs].to(self.device), mean, std)
            n = len(x)
            if self.compiled and n < bs:
                # A smaller last batch would make the compiled model specialise once more.
                x = torch.cat([x, x.new_zeros((bs - n, *x.shape[1:]))])
            logits = self.qmodel(x.contiguous(memory_format=torch.channels_last))[:n]
            correct += (logits.argmax(1).cpu() == labels[start : start + bs]).sum().item()
        return correct / len(images)

    def _set(self, config: QuantConfig) -> None:
        """Put the model in ``config``'s state: quantized, fine-tuned first if the spec says so."""
        spec = self.spec
        if spec.finetune_steps > 0:
            train_x, train_y = self.train
            self.qmodel.finetune(
                config,
                train_x,
                train_y,
                self.prepared.mean,
                self.prepared.std,
                steps=spec.finetune_steps,
                batch_size=spec.finetune_batch_size,
                lr=spec.finetune_lr,
                seed=self.prepared.experiment.seed,
            )
        else:
            self.qmodel.apply(config)

    def evaluate(self, config: QuantConfig, with_test: bool = False) -> EvalResult:
        if with_test and self.test is None:
            raise ValueError("this evaluator holds no test split")
        start = time.perf_counter()
        self._set(config)
        val_acc = self.accuracy(*self.val)
        test_acc = self.accuracy(*self.test) if with_test else None
        return EvalResult(config.hash, val_acc, test_acc, time.perf_counter() - start)

    def test_accuracy(self, config: QuantConfig) -> float:
        """Held-out accuracy of a chosen config, for final reporting only."""
        if self.test is None:
            raise ValueError("this evaluator holds no test split")
        self._set(config)
        return self.accuracy(*self.test)

    def float_accuracy(self, images: Tensor, labels: Tensor) -> float:
        """Accuracy of the float (BN-folded) model, leaving the evaluator in float state."""
        self.qmodel.reset()
        return self.accuracy(images, labels)


# Bump when quantization or scoring changes so that earlier accuracies are no longer comparable.
PROTOCOL_VERSION = 1


def evaluation_key(prepared: Prepared, val_x: Tensor, val_y: Tensor) -> str:
    """Fingerprint of everything that determines a config's validation accuracy.

    It hashes content, not paths: the same weights, calibration, validation images and
    evaluation protocol give the same key on a laptop and on a cluster, and anything else
    (another seed, preset or checkpoint) gives another, so the store never mixes them.
    """
    h = hashlib.sha256()
    spec = prepared.experiment.eval
    meta = {
        "protocol": PROTOCOL_VERSION,
        "model": prepared.experiment.model.name,
        "width": prepared.experiment.model.width,
        "dataset": prepared.experiment.data.name,
        "layers": list(prepared.layer_names),
        "keep_first_last": prepared.experiment.quant.keep_first_last,  # the image unquantized
        "finetune": {k: v for k, v in asdict(spec).items() if k.startswith("finetune")},
        "finetune_seed": prepared.experiment.seed if spec.finetune_steps else None,
        "act_signed": list(prepared.calibration.act_signed),
        "act_scale": [sorted(d.items()) for d in prepared.calibration.act_scale],
    }
    h.update(json.dumps(meta, sort_keys=True).encode())
    tensors = [prepared.state_dict[k] for k in sorted(prepared.state_dict)]
    tensors += [t for d in prepared.calibration.weight_scale for _, t in sorted(d.items())]
    for t in [*tensors, val_x, val_y]:
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]
