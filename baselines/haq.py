"""HAQ: hardware-aware automated quantization with DDPG (Wang et al., CVPR 2019).

Read top to bottom: the hyperparameters (``HaqArgs``), the per-step state (``layer_states``),
the action-to-bits mapping, the two networks, the replay buffer, and the agent as an ask/tell
proposer. Facts are from the paper and mit-han-lab/haq (see shared/PAPER.md):

- One episode walks the quantizable layers in execution order, two steps per layer: the weight
  bits, then the activation bits (HAQ's linear-quantization variant, 2N steps). Besides the
  layer's features, the state holds the bits chosen at the step before divided by the top
  bitwidth (1.0 at an episode's first step) and whether this is a weight step.
- After the episode, the budget is enforced by lowering bits from the last layer backwards
  (``DesignPoint.repair``, shared with the other baselines), then the config is evaluated.
  Under ``[quant] keep_first_last`` (the default) the first layer's weights stay at 8 bits with
  its input unquantized and the last layer at W8/A8 (HAQ's ``_keep_first_last_layer``).
- Reward ``0.1 x (accuracy - full-precision accuracy)``, accuracies in percent as HAQ's are, given
  to every transition of the episode; the critic learns it minus a moving average (alpha 0.5)
  of the sampled batches' rewards. Discount 1.
- Uniform random actions while ``episode <= warmup`` (HAQ's test: 21 episodes for warm-up 20),
  then the actor's action plus truncated-normal noise in [0, 1] with
  ``sigma = 0.5 x 0.99^(episode - warmup)``. The first actor episode (21) acts before any update,
  as in HAQ's loop.
- One actor and one critic update per transition of each episode after warm-up
  (``episode > warmup``).
- Replay buffer of 128 transitions per layer (HAQ: ``rmsize x number of layers``), batch 64.
- Output layers keep PyTorch's default initialisation: HAQ's DDPG takes ``init_w`` but never uses
  it.

Where we differ, and why:

- Accuracy comes from the shared evaluator (post-training quantization by default, or
  ``eval.finetune_steps`` of HAQ-style fine-tuning), on the validation split, as for every
  method; HAQ fine-tuned one short epoch per episode.
- The first and last layers are pinned in every config, within budget or not; HAQ pins them only
  inside its budget loop, so an episode that fits without it keeps whatever the agent chose
  there, the image input quantized included. One search space for every method needs the pin.
- HAQ prices the unquantized image input at ``a_bits = -1``, which indexes its cost table's
  7-bit column; we price it at 8 bits, as the image is.
- At an episode's first step HAQ's state is the first layer's row as the previous episode left
  it (previous bits from that episode, weight-step flag 0); ours is the fresh row (1.0 and 1).
- A feature constant over the layers (every stride 1, say) is 0 here; HAQ leaves it raw.
- HAQ appends one extra transition after every episode (the final state with the actor's
  action and reward 0); we store only the episode's 2N transitions.
- ``episodes_per_ask`` (``--batch``) rolls out that many episodes with the same actor, each with
  its own noise, and evaluates them together on parallel evaluators before learning from them
  in order. ``1`` (the default) is HAQ's sequential loop exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from aqgan_ray.config import QuantConfig
from aqgan_ray.layers import Layer
from aqgan_ray.search import DesignPoint, Proposer, rng_restore, rng_state


@dataclass(frozen=True)
class HaqArgs:
    warmup: int = 20
    """Random episodes while ``episode <= warmup`` (HAQ's test: warmup + 1 of them)."""
    hidden: int = 300
    """Units in each hidden layer of the actor and the critic."""
    lr_actor: float = 1e-4
    lr_critic: float = 1e-3
    tau: float = 0.01
    """Soft update rate of the target networks."""
    discount: float = 1.0
    batch_size: int = 64
    buffer_per_layer: int = 128
    """Replay buffer size, in transitions, per quantizable layer (HAQ: ``rmsize`` x layers)."""
    init_delta: float = 0.5
    """Exploration noise sigma at the first episode after warm-up."""
    delta_decay: float = 0.99
    """Sigma is multiplied by this each episode."""
    moving_alpha: float = 0.5
    """Rate of the moving-average reward baseline."""
    reward_scale: float = 0.1
    """Reward per percentage point of accuracy above (below) full precision."""
    episodes_per_ask: int = 1
    """Episodes rolled out with one actor before learning (1 = HAQ's sequential loop)."""


# ------------------------------------------------------------------------------------------
# State and action
# ------------------------------------------------------------------------------------------

FEATURES = (
    "layer_index",
    "in_channels",
    "out_channels",
    "kernel",
    "stride",
    "feature_map",
    "weights",
    "depthwise",
    "weight_step",
    "prev_action",
)


def layer_states(layers: Sequence[Layer]) -> np.ndarray:
    """HAQ's 10 features for each of the 2N steps (weight step, then activation step, per
    layer), every column min-max normalised over the steps; a constant column becomes 0.
    ``prev_action`` (the previous step's bits / top bits) is filled in as the episode runs.
    Linear layers have kernel 1 and stride 0 in the layer table, as in HAQ."""
    rows = []
    for i, layer in enumerate(layers):
        depthwise = float(layer.groups > 1 and layer.groups == layer.in_channels)
        for weight_step in (1.0, 0.0):
            rows.append(
                [
                    i,
                    layer.in_channels,
                    layer.out_channels,
                    layer.kernel,
                    layer.stride,
                    layer.in_h * layer.in_w,
                    layer.params,
                    depthwise,
                    weight_step,
                    0.0,
                ]
            )
    table = np.asarray(rows, dtype=np.float64)
    low, high = table.min(0), table.max(0)
    span = np.where(high > low, high - low, 1.0)
    return ((table - low) / span).astype(np.float32)


def action_to_bits(action: float, bit_choices: Sequence[int]) -> int:
    """HAQ's mapping ``round(b_min - 0.5 + a (b_max - b_min + 1))`` over the choice range,
    then the nearest allowed choice (the same thing when the choices are contiguous)."""
    low, high = min(bit_choices), max(bit_choices)
    bits = int(np.clip(np.round(low - 0.5 + action * (high - low + 1)), low, high))
    return min(bit_choices, key=lambda b: (abs(b - bits), b))


def truncated_normal(rng: np.random.Generator, mean: float, sigma: float) -> float:
    """A draw of N(mean, sigma) restricted to [0, 1], by rejection (mean lies in [0, 1], so at
    least a sixth of draws are accepted even for large sigma)."""
    if sigma <= 0:
        return float(np.clip(mean, 0.0, 1.0))
    for _ in range(1000):
        x = rng.normal(mean, sigma)
        if 0.0 <= x <= 1.0:
            return float(x)
    return float(np.clip(mean, 0.0, 1.0))


# ------------------------------------------------------------------------------------------
# Networks and replay
# ------------------------------------------------------------------------------------------


class Actor(nn.Module):
    def __init__(self, n_features: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(n_features, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, 1),
            nn.Sigmoid(),
        )

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        return self.net(state)


class Critic(nn.Module):
    """State and action each into ``hidden`` units, added, then ``hidden``, then Q (HAQ)."""

    def __init__(self, n_features: int, hidden: int):
        super().__init__()
        self.state_in = nn.Linear(n_features, hidden)
        self.action_in = nn.Linear(1, hidden)
        self.body = nn.Sequential(nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
        self.out = nn.Linear(hidden, 1)

    def forward(self, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(self.state_in(state) + self.action_in(action)))


class Replay:
    """A ring buffer of (state, action, reward, next state, terminal) transitions."""

    def __init__(self, capacity: int, n_features: int):
        self.state = torch.zeros(capacity, n_features)
        self.action = torch.zeros(capacity, 1)
        self.reward = torch.zeros(capacity, 1)
        self.next_state = torch.zeros(capacity, n_features)
        self.terminal = torch.zeros(capacity, 1)
        self.size = 0
        self.head = 0

    def add(self, state, action, reward, next_state, terminal) -> None:
        i = self.head
        self.state[i] = torch.as_tensor(state)
        self.action[i, 0] = float(action)
        self.reward[i, 0] = float(reward)
        self.next_state[i] = torch.as_tensor(next_state)
        self.terminal[i, 0] = float(terminal)
        self.head = (i + 1) % len(self.state)
        self.size = min(self.size + 1, len(self.state))

    def sample(self, rng: np.random.Generator, n: int) -> tuple[torch.Tensor, ...]:
        idx = torch.as_tensor(rng.integers(0, self.size, n))
        fields = (self.state, self.action, self.reward, self.next_state, self.terminal)
        return tuple(f[idx] for f in fields)

    def state_dict(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "action": self.action,
            "reward": self.reward,
            "next_state": self.next_state,
            "terminal": self.terminal,
            "size": self.size,
            "head": self.head,
        }

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        for key, value in saved.items():
            setattr(self, key, value)


# ------------------------------------------------------------------------------------------
# The agent
# ------------------------------------------------------------------------------------------


@dataclass
class _Episode:
    states: np.ndarray  # [2N, features], prev_action filled in
    actions: np.ndarray  # [2N], continuous, before rounding and budget enforcement


class Haq(Proposer):
    """DDPG as a proposer: ``ask`` rolls out episodes, ``tell`` learns from their rewards."""

    name = "haq"

    def __init__(
        self, point: DesignPoint, seed: int, fp_val_acc: float, args: HaqArgs | None = None
    ):
        self.point, self.fp_val_acc = point, fp_val_acc
        self.args = args = args or HaqArgs()
        self.states = layer_states(point.layers)
        n_features = self.states.shape[1]
        with torch.random.fork_rng():  # the networks' start is set by the seed alone
            torch.manual_seed(seed)
            self.actor = Actor(n_features, args.hidden)
            self.critic = Critic(n_features, args.hidden)
            self.actor_target = Actor(n_features, args.hidden)
            self.critic_target = Critic(n_features, args.hidden)
        self.actor_target.load_state_dict(self.actor.state_dict())
        self.critic_target.load_state_dict(self.critic.state_dict())
        # foreach: one fused update over all tensors; on CPU Adam defaults to a loop per tensor.
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=args.lr_actor, foreach=True)
        self.critic_opt = torch.optim.Adam(
            self.critic.parameters(), lr=args.lr_critic, foreach=True
        )
        self.replay = Replay(args.buffer_per_layer * len(point.layers), n_features)
        self.rng = np.random.default_rng(seed)
        self.episode = 0  # episodes rolled out
        self.moving_average: float | None = None
        self.best_reward = -np.inf
        self._pending: list[_Episode] = []

    # -- ask -------------------------------------------------------------------------------
    def ask(self, n: int) -> list[QuantConfig]:
        episodes = [self._rollout() for _ in range(min(n, self.args.episodes_per_ask))]
        self._pending = episodes
        return [self._config(e.actions) for e in episodes]

    def _rollout(self) -> _Episode:
        args, states = self.args, self.states.copy()
        actions = np.zeros(len(states), dtype=np.float32)
        top = max(self.point.bit_choices)
        prev = 1.0  # HAQ's initial "bits" feature: the top bitwidth
        for t in range(len(states)):
            states[t, -1] = prev
            if self.episode <= args.warmup:
                action = float(self.rng.uniform(0.0, 1.0))
            else:
                with torch.no_grad():
                    mean = float(self.actor(torch.from_numpy(states[t][None]))[0, 0])
                sigma = args.init_delta * args.delta_decay ** (self.episode - args.warmup)
                action = truncated_normal(self.rng, mean, sigma)
            actions[t] = action
            prev = action_to_bits(action, self.point.bit_choices) / top
        self.episode += 1
        return _Episode(states, actions)

    def _config(self, actions: np.ndarray) -> QuantConfig:
        bits = [action_to_bits(float(a), self.point.bit_choices) for a in actions]
        return self.point.repair(self.point.config(bits[0::2], bits[1::2]))

    # -- tell ------------------------------------------------------------------------------
    def tell(self, configs: Sequence[QuantConfig], val_accs: Sequence[float]) -> None:
        episodes, self._pending = self._pending, []
        first_episode = self.episode - len(episodes)
        for k, (episode, acc) in enumerate(zip(episodes, val_accs, strict=True)):
            reward = self.args.reward_scale * 100.0 * (acc - self.fp_val_acc)
            self.best_reward = max(self.best_reward, reward)
            learn = first_episode + k > self.args.warmup  # HAQ: `if episode > warmup: update`
            last = len(episode.states) - 1
            for t in range(len(episode.states)):
                next_state = episode.states[min(t + 1, last)]
                self.replay.add(
                    episode.states[t], episode.actions[t], reward, next_state, t == last
                )
                if learn:
                    self._update()

    def _update(self) -> None:
        args = self.args
        state, action, reward, next_state, terminal = self.replay.sample(
            self.rng, min(args.batch_size, self.replay.size)
        )
        batch_mean = float(reward.mean())
        if self.moving_average is None:
            self.moving_average = batch_mean
        else:
            self.moving_average += args.moving_alpha * (batch_mean - self.moving_average)
        reward = reward - self.moving_average
        with torch.no_grad():
            next_q = self.critic_target(next_state, self.actor_target(next_state))
            target_q = reward + args.discount * (1.0 - terminal) * next_q
        critic_loss = nn.functional.mse_loss(self.critic(state, action), target_q)
        self.critic_opt.zero_grad()
        critic_loss.backward()
        self.critic_opt.step()
        actor_loss = -self.critic(state, self.actor(state)).mean()
        self.actor_opt.zero_grad()
        actor_loss.backward()
        self.actor_opt.step()
        for net, target in ((self.actor, self.actor_target), (self.critic, self.critic_target)):
            with torch.no_grad():
                for p, p_target in zip(net.parameters(), target.parameters(), strict=True):
                    p_target.lerp_(p, args.tau)  # (1 - tau) target + tau online

    # -- checkpoint ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "args": asdict(self.args),
            "actor": self.actor.state_dict(),
            "critic": self.critic.state_dict(),
            "actor_target": self.actor_target.state_dict(),
            "critic_target": self.critic_target.state_dict(),
            "actor_opt": self.actor_opt.state_dict(),
            "critic_opt": self.critic_opt.state_dict(),
            "replay": self.replay.state_dict(),
            "rng": rng_state(self.rng),
            "episode": self.episode,
            "moving_average": self.moving_average,
            "best_reward": float(self.best_reward),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name in ("actor", "critic", "actor_target", "critic_target"):
            getattr(self, name).load_state_dict(state[name])
        self.actor_opt.load_state_dict(state["actor_opt"])
        self.critic_opt.load_state_dict(state["critic_opt"])
        self.replay.load_state_dict(state["replay"])
        rng_restore(self.rng, state["rng"])
        self.episode, self.moving_average = state["episode"], state["moving_average"]
        self.best_reward = state["best_reward"]
        self._pending = []

    def summary(self) -> dict[str, Any]:
        return {
            "episodes": self.episode,
            "warmup_episodes": min(self.episode, self.args.warmup + 1),
            "episodes_per_ask": self.args.episodes_per_ask,
            "best_reward": float(self.best_reward),
        }
