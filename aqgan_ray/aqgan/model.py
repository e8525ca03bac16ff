"""AQGAN: a conditional generator of quantization configs, its discriminator and the accuracy
predictor that keeps the condition honest. Pure torch: no Ray, no files (``checkpoint.py``
saves and loads them).

The paper gives the idea (a conditional GAN, condition = target accuracy, output = per-layer
bitwidths) but not the design; each choice below is ours and says why.

- **Representation.** A config is one categorical choice per layer and kind (weight,
  activation) over the allowed bitwidths, encoded one-hot: ``[L, 2, K]``. Bits are categories,
  not numbers, because accuracy is far from linear in bits (2 bits collapses, 6 and 8 rarely
  differ) and accelerators care about discrete levels (BitFusion pads to 2/4/8).
- **Condition.** Target accuracy, scaled to [0, 1] over the store's accuracy range, fed as the
  value and a few sinusoidal features so that nearby targets are easy to tell apart.
- **Generator.** An MLP from (noise, condition) to logits; training draws differentiable
  samples with straight-through Gumbel-softmax, generation samples the categorical directly,
  which is itself a source of diversity.
- **Discriminator.** An MLP on (config, condition) with spectral normalisation and the hinge
  loss, the stable default for small conditional GANs. It also sees real configs paired with a
  wrong accuracy as fake (matching-aware), so it judges whether a config fits its condition,
  not only whether it looks real.
- **Accuracy predictor.** A small ensemble of MLPs fitted to the store's (config, accuracy)
  pairs before the GAN. The generator is penalised by the squared gap between the predicted
  accuracy of what it makes and the target it was given: with a few hundred samples the
  discriminator alone cannot enforce the condition precisely, while a predictor can. The same
  ensemble, corrected by the residual model below, ranks proposals at generation time, and
  the error of the two on held-out configs is the fidelity figure Tune optimises.
- **Residual model for ranking.** A Gaussian process on the predictor's residuals over the
  store's configs, with an RBF kernel on the per-layer noise powers 2^-(b - b_min) (a change
  at 2-3 bits moves a config far, one between 6 and 8 bits hardly at all), hyperparameters by
  marginal likelihood (scikit-learn). Proposals are ranked by |predicted - target| plus the
  GP's posterior std, which, unlike the ensemble's spread, grows away from the configs
  evaluated: the generator seeks out what its predictor believes, and among 1000 proposals
  those ranked best are often where the predictor is confidently wrong. With refinement,
  each round's evaluations land next to the proposals and correct the GP there (what it
  gained: docs/fidelity-history.md); the generator is trained against the predictor alone.
- **Diversity.** A mode-seeking term (Mao et al., 2019) rewards different outputs for
  different noise at the same target, so one target does not collapse onto one config.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm


@dataclass(frozen=True)
class GanSpec:
    noise_dim: int = 32
    hidden: int = 256
    predictor_hidden: int = 32
    predictor_members: int = 4  # ensemble size
    predictor_epochs: int = 600
    predictor_lr: float = 5e-3
    predictor_weight_decay: float = 1e-3
    steps: int = 1500  # generator updates
    batch_size: int = 64
    lr_g: float = 1e-3
    lr_d: float = 1e-3
    cond_weight: float = 10.0  # weight of (predicted - target)^2 in the generator loss
    diversity_weight: float = 0.2
    gumbel_tau: float = 0.7
    holdout: float = 0.2  # share of the store held out for fidelity
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


CONDITION_FEATURES = 9  # the value, then sin/cos at four frequencies


def encode_condition(c: Tensor) -> Tensor:
    """[n] scaled targets -> [n, 9] features."""
    c = c.reshape(-1, 1)
    freqs = torch.tensor([1.0, 2.0, 4.0, 8.0], device=c.device) * math.pi
    return torch.cat([c, torch.sin(c * freqs), torch.cos(c * freqs)], dim=1)


class Generator(nn.Module):
    def __init__(self, n_layers: int, n_choices: int, noise_dim: int, hidden: int):
        super().__init__()
        self.shape = (n_layers, 2, n_choices)
        self.noise_dim = noise_dim
        self.net = nn.Sequential(
            nn.Linear(noise_dim + CONDITION_FEATURES, hidden),
            nn.LeakyReLU(0.2),
            nn.Linear(hidden, hidden),
            nn.LeakyReLU(0.2),
            nn.Linear(hidden, n_layers * 2 * n_choices),
        )

    def forward(self, z: Tensor, c: Tensor) -> Tensor:
        """Logits [n, L, 2, K]."""
        return self.net(torch.cat([z, encode_condition(c)], dim=1)).reshape(-1, *self.shape)


class Discriminator(nn.Module):
    def __init__(self, n_layers: int, n_choices: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(
            spectral_norm(nn.Linear(n_layers * 2 * n_choices + CONDITION_FEATURES, hidden)),
            nn.LeakyReLU(0.2),
            spectral_norm(nn.Linear(hidden, hidden)),
            nn.LeakyReLU(0.2),
            spectral_norm(nn.Linear(hidden, 1)),
        )

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        return self.net(torch.cat([x.flatten(1), encode_condition(c)], dim=1)).squeeze(1)


def noise_power(bit_values: Sequence[int]) -> Tensor:
    """Quantization noise power of each bit choice relative to the lowest, 2^-(b - b_min)."""
    values = torch.tensor(list(bit_values), dtype=torch.float32)
    return 2.0 ** (-(values - values.min()))


def noise_features(x: Tensor, power: Tensor) -> Tensor:
    """One-hot configs [n, L, 2, K] -> noise power per layer and kind [n, 2L]: the predictor's
    input for its sensitivity path and the residual GP's input."""
    return (x * power).sum(-1).flatten(1)


class Predictor(nn.Module):
    """Scaled accuracy of a one-hot config; an ensemble of these is ``PredictorEnsemble``.

    Additive sensitivities with a learned link, as in HAWQ-style sensitivity sums: each layer
    and kind contributes "damage" through two paths, (1) a learned sensitivity times the
    quantization noise power of its bitwidth, 2^-(b - b_min) (noise variance falls by 4x per
    bit; the square root of that ratio fitted better), and (2) a free weight per (layer, kind,
    bitwidth) for what the noise model misses. A small MLP turns the damage channels into
    accuracy (the fall from good to chance is steep and saturates). Both paths together
    cross-validated better than either alone or a plain MLP on the one-hot input, which has as
    many weights as the store has configs (docs/fidelity-history.md).
    """

    def __init__(self, bit_values: Sequence[int], n_layers: int, hidden: int, channels: int = 4):
        super().__init__()
        self.register_buffer("noise_power", noise_power(bit_values), persistent=False)
        self.sensitivity = nn.Linear(n_layers * 2, channels)
        self.residual = nn.Linear(n_layers * 2 * len(bit_values), channels, bias=False)
        self.link = nn.Sequential(
            nn.Linear(channels, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
            nn.Linear(hidden, 1),
        )  # fmt: skip

    def forward(self, x: Tensor) -> Tensor:
        damage = self.sensitivity(noise_features(x, self.noise_power)) + self.residual(x.flatten(1))
        return self.link(damage).squeeze(1)


class PredictorEnsemble(nn.Module):
    def __init__(self, members: list[Predictor]):
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(mean, std) of the members' predictions."""
        preds = torch.stack([m(x) for m in self.members])
        return preds.mean(0), preds.std(0) if len(self.members) > 1 else torch.zeros_like(preds[0])


def one_hot(idx: Tensor, n_choices: int) -> Tensor:
    """Choice indices [n, L, 2] -> float one-hot [n, L, 2, K]."""
    return nn.functional.one_hot(idx.long(), n_choices).float()


@dataclass
class Scaler:
    """Accuracy <-> condition in [0, 1] over the range the store covers."""

    lo: float
    hi: float

    def scale(self, acc):
        return (acc - self.lo) / max(self.hi - self.lo, 1e-6)

    def unscale(self, c):
        return c * max(self.hi - self.lo, 1e-6) + self.lo


def fit_predictor(
    x: Tensor, y: Tensor, spec: GanSpec, bit_values: Sequence[int], seed: int
) -> PredictorEnsemble:
    """Each member on a bootstrap resample of the training configs (full batch, AdamW)."""
    members = []
    gen = torch.Generator().manual_seed(seed)
    for m in range(spec.predictor_members):
        torch.manual_seed(seed * 1000 + m)
        net = Predictor(bit_values, x.shape[1], spec.predictor_hidden)
        idx = torch.randint(0, len(x), (len(x),), generator=gen)
        xb, yb = x[idx], y[idx]
        opt = torch.optim.AdamW(
            net.parameters(), lr=spec.predictor_lr, weight_decay=spec.predictor_weight_decay
        )
        for _ in range(spec.predictor_epochs):
            loss = nn.functional.mse_loss(net(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        members.append(net.eval())
    return PredictorEnsemble(members).eval()


class ResidualGP(nn.Module):
    """Exact GP posterior on fixed training points, for prediction: mean k(x, X) alpha and
    std sqrt(k(x, x) - |L^-1 k(X, x)|^2), with k = amplitude * RBF(lengthscale) + noise. Fitted
    by ``fit_residual``; buffers only, so a checkpoint stays plain tensors."""

    def __init__(self, n_train: int, n_features: int):
        super().__init__()
        self.register_buffer("x", torch.zeros(n_train, n_features, dtype=torch.float64))
        self.register_buffer("alpha", torch.zeros(n_train, dtype=torch.float64))
        self.register_buffer("chol", torch.zeros(n_train, n_train, dtype=torch.float64))
        # amplitude, lengthscale, noise
        self.register_buffer("hyper", torch.zeros(3, dtype=torch.float64))

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
        amplitude, lengthscale, noise = self.hyper
        f = features.to(torch.float64)
        k = amplitude * torch.exp(-0.5 * torch.cdist(f, self.x).square() / lengthscale**2)
        mean = k @ self.alpha
        v = torch.linalg.solve_triangular(self.chol, k.T, upper=False)
        var = (amplitude + noise - v.square().sum(0)).clamp_min(0.0)
        return mean.float(), var.sqrt().float()

    def condition(self, features: Tensor, residual: Tensor) -> ResidualGP:
        """This posterior with more observations added, hyperparameters kept: the exact update
        (one Cholesky of the enlarged kernel matrix, milliseconds at a few hundred points), no
        marginal-likelihood refit. Points it already holds are skipped."""
        amplitude, lengthscale, noise = self.hyper
        known = {tuple(row) for row in self.x.tolist()}
        f = features.to(torch.float64)
        fresh: dict[tuple, int] = {}
        for i, row in enumerate(f.tolist()):
            if tuple(row) not in known:
                fresh.setdefault(tuple(row), i)
        if not fresh:
            return self
        pick = torch.tensor(list(fresh.values()))
        held = self.chol @ (self.chol.T @ self.alpha)  # (K + noise) alpha: the stored targets
        x = torch.cat([self.x, f[pick]])
        y = torch.cat([held, residual.to(torch.float64)[pick]])
        k = amplitude * torch.exp(-0.5 * torch.cdist(x, x).square() / lengthscale**2)
        # the diagonal as scikit-learn builds it: the white noise plus its 1e-10 jitter
        chol = torch.linalg.cholesky(k + (noise + 1e-10) * torch.eye(len(x), dtype=x.dtype))
        out = ResidualGP(*x.shape)
        out.x.copy_(x)
        out.alpha.copy_(torch.cholesky_solve(y[:, None], chol).squeeze(1))
        out.chol.copy_(chol)
        out.hyper.copy_(self.hyper)
        return out.eval()


def fit_residual(features: Tensor, residual: Tensor, seed: int) -> ResidualGP:
    """Hyperparameters by maximum marginal likelihood (3 L-BFGS starts), then the posterior's
    buffers. Bounds in scaled-accuracy units: residual spread 0.003-1, noise 3e-4-0.3."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.gaussian_process import GaussianProcessRegressor
    from sklearn.gaussian_process.kernels import RBF, ConstantKernel, WhiteKernel

    f = features.double().numpy()
    kernel = ConstantKernel(0.01, (1e-5, 1.0)) * RBF(
        0.3 * math.sqrt(f.shape[1]), (1e-2, 1e3)
    ) + WhiteKernel(1e-4, (1e-7, 1e-1))
    gp = GaussianProcessRegressor(kernel, n_restarts_optimizer=2, random_state=seed)
    with warnings.catch_warnings():
        # Evaluations are deterministic: a noise level at its lower bound is a right answer.
        warnings.simplefilter("ignore", ConvergenceWarning)
        gp.fit(f, residual.double().numpy())
    out = ResidualGP(*f.shape)
    out.x.copy_(torch.from_numpy(gp.X_train_))
    out.alpha.copy_(torch.from_numpy(gp.alpha_))
    out.chol.copy_(torch.from_numpy(gp.L_))
    fitted = gp.kernel_
    out.hyper.copy_(
        torch.tensor(
            [fitted.k1.k1.constant_value, fitted.k1.k2.length_scale, fitted.k2.noise_level],
            dtype=torch.float64,
        )
    )
    return out.eval()


@dataclass
class TrainedGan:
    generator: Generator
    discriminator: Discriminator
    predictor: PredictorEnsemble
    scaler: Scaler
    residual: ResidualGP
    bit_values: tuple[int, ...]

    def rank_predict(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(predicted scaled accuracy, its std) of one-hot configs: the ensemble's mean plus
        the residual GP's, and the GP's posterior std."""
        mean, _ = self.predictor(x)
        correction, std = self.residual(noise_features(x, noise_power(self.bit_values)))
        return mean + correction, std

    def with_evidence(self, x: Tensor, acc: Tensor) -> TrainedGan:
        """This model with evaluated configs ``x`` (one-hot) and accuracies ``acc`` added to the
        residual GP (``ResidualGP.condition``); the generator and the ensemble are unchanged."""
        with torch.no_grad():
            mean, _ = self.predictor(x)
        c = torch.as_tensor(self.scaler.scale(acc), dtype=torch.float32)
        features = noise_features(x, noise_power(self.bit_values))
        return replace(self, residual=self.residual.condition(features, c - mean))


def fit_ranker(
    x: Tensor, c: Tensor, spec: GanSpec, bit_values: Sequence[int]
) -> tuple[PredictorEnsemble, ResidualGP]:
    """The ensemble on (one-hot configs, scaled accuracies), then the GP on its residuals."""
    predictor = fit_predictor(x, c, spec, bit_values, spec.seed)
    for p in predictor.parameters():
        p.requires_grad_(False)
    with torch.no_grad():
        mean, _ = predictor(x)
    residual = fit_residual(noise_features(x, noise_power(bit_values)), c - mean, spec.seed)
    return predictor, residual


def train_gan(
    idx: Tensor,
    acc: Tensor,
    bit_values: Sequence[int],
    spec: GanSpec,
    on_step: Callable[[int, TrainedGan], None] | None = None,
    report_every: int = 250,
    init: TrainedGan | None = None,
) -> TrainedGan:
    """Train the predictor, then the GAN, on configs ``idx`` [n, L, 2] with accuracies ``acc``.

    ``on_step(step, model)`` is called every ``report_every`` generator steps and at the end
    (Ray Tune reports and checkpoints from there).
    """
    torch.manual_seed(spec.seed)
    n_layers, n_choices = idx.shape[1], len(bit_values)
    scaler = Scaler(float(acc.min()), float(acc.max()))
    x = one_hot(idx, n_choices)
    c = torch.as_tensor(scaler.scale(acc), dtype=torch.float32)
    predictor, residual = fit_ranker(x, c, spec, bit_values)

    g = Generator(n_layers, n_choices, spec.noise_dim, spec.hidden)
    d = Discriminator(n_layers, n_choices, spec.hidden)
    if init is not None:
        g.load_state_dict(init.generator.state_dict())
        d.load_state_dict(init.discriminator.state_dict())
        g.train(), d.train()
    opt_g = torch.optim.Adam(g.parameters(), lr=spec.lr_g, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(d.parameters(), lr=spec.lr_d, betas=(0.5, 0.999))
    model = TrainedGan(g, d, predictor, scaler, residual, tuple(int(b) for b in bit_values))
    gen = torch.Generator().manual_seed(spec.seed)
    n = len(x)
    bs = min(spec.batch_size, n)

    def fake(cond: Tensor) -> Tensor:
        z = torch.randn(len(cond), spec.noise_dim)
        return nn.functional.gumbel_softmax(g(z, cond), tau=spec.gumbel_tau, hard=True, dim=-1)

    for step in range(1, spec.steps + 1):
        pick = torch.randint(0, n, (bs,), generator=gen)
        real, cond = x[pick], c[pick]
        wrong = cond[torch.randperm(bs, generator=gen)]
        # Discriminator: real pairs up, generated and mismatched pairs down (hinge).
        with torch.no_grad():
            generated = fake(cond)
        loss_d = (
            nn.functional.relu(1 - d(real, cond)).mean()
            + 0.5 * nn.functional.relu(1 + d(generated, cond)).mean()
            + 0.5 * nn.functional.relu(1 + d(real, wrong)).mean()
        )
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()
        # Generator: fool D at data-like targets; hit the target (per the predictor) at
        # targets spread over the whole range, thin regions included; vary with the noise.
        targets = torch.cat([cond, torch.rand(bs, generator=gen)])
        z1, z2 = torch.randn(2, len(targets), spec.noise_dim)
        out1 = nn.functional.gumbel_softmax(g(z1, targets), tau=spec.gumbel_tau, hard=True, dim=-1)
        out2 = nn.functional.gumbel_softmax(g(z2, targets), tau=spec.gumbel_tau, hard=True, dim=-1)
        adv = -d(out1[:bs], cond).mean()
        predicted, _ = predictor(out1)
        cond_loss = nn.functional.mse_loss(predicted, targets)
        spread = (out1 - out2).abs().mean(dim=(1, 2, 3)) / (z1 - z2).abs().mean(1)
        loss_g = adv + spec.cond_weight * cond_loss - spec.diversity_weight * spread.mean()
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        if on_step is not None and (step % report_every == 0 or step == spec.steps):
            on_step(step, model)
    g.eval()
    d.eval()
    return model


@torch.no_grad()
def sample(
    model: TrainedGan, target_acc: float, n: int, seed: int, temperature: float = 1.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` proposals for a target accuracy: (choice indices [n, L, 2], predicted accuracy,
    its std), sampled from the generator's categorical distributions."""
    gen = torch.Generator().manual_seed(seed)
    g = model.generator
    c = torch.full((n,), float(model.scaler.scale(target_acc)))
    z = torch.randn(n, g.noise_dim, generator=gen)
    probs = torch.softmax(g(z, c) / temperature, dim=-1)
    flat = probs.reshape(-1, probs.shape[-1])
    idx = torch.multinomial(flat, 1, generator=gen).reshape(probs.shape[:-1])
    mean, std = model.rank_predict(one_hot(idx, probs.shape[-1]))
    scale = model.scaler.hi - model.scaler.lo
    return idx.numpy(), model.scaler.unscale(mean.numpy()), std.numpy() * scale


@torch.no_grad()
def predict(model: TrainedGan, idx: Tensor, n_choices: int) -> tuple[np.ndarray, np.ndarray]:
    mean, std = model.rank_predict(one_hot(idx, n_choices))
    scale = model.scaler.hi - model.scaler.lo
    return model.scaler.unscale(mean.numpy()), std.numpy() * scale
