"""HAQ's pieces, each against what the paper and its code define: the 10 state features and
their normalisation, the action-to-bits mapping, the exploration noise, budget enforcement
after an episode, and a seeded run that is reproducible and resumes exactly from a checkpoint.

The agent is told a simple function of its configs here (the evaluators are tested elsewhere,
and the resumed search over real evaluations is in tests/test_search.py)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from aqgan_ray.search import DesignPoint
from baselines.haq import FEATURES, Haq, HaqArgs, action_to_bits, layer_states, truncated_normal

CHOICES = (2, 3, 4, 5, 6, 7, 8)


@pytest.fixture(scope="module")
def point(point_at) -> DesignPoint:
    return point_at("latency_ms=0.4x")


def test_ten_features_per_step_min_max_normalised(smoke_layers):
    states = layer_states(smoke_layers)
    assert states.shape == (2 * len(smoke_layers), len(FEATURES)) == (2 * len(smoke_layers), 10)
    assert states.min() >= 0.0 and states.max() <= 1.0
    col = {name: states[:, i] for i, name in enumerate(FEATURES)}
    for name in ("layer_index", "in_channels", "out_channels", "kernel", "feature_map", "weights"):
        assert col[name].min() == 0.0 and col[name].max() == 1.0, name
    # Weight step then activation step for every layer; both steps describe the same layer.
    assert np.array_equal(col["weight_step"], np.tile([1.0, 0.0], len(smoke_layers)))
    assert np.array_equal(states[0::2, :8], states[1::2, :8])
    assert np.allclose(col["layer_index"][0::2], np.linspace(0, 1, len(smoke_layers)))
    depthwise = np.array([layer.kind == "dwconv" for layer in smoke_layers], dtype=np.float32)
    assert depthwise.any() and np.array_equal(col["depthwise"][0::2], depthwise)
    # The classifier is linear: kernel 1 and stride 0, the smallest values of their columns.
    assert smoke_layers[-1].kind == "linear"
    assert col["stride"][-1] == 0.0 and col["kernel"][-1] == 0.0
    assert not col["prev_action"].any()  # filled in while an episode runs


def test_action_mapping_is_haqs_rounding():
    # round(b_min - 0.5 + a (b_max - b_min + 1)) over 2..8
    assert action_to_bits(0.0, CHOICES) == 2
    assert action_to_bits(1.0, CHOICES) == 8
    assert action_to_bits(0.5, CHOICES) == 5  # 1.5 + 3.5
    assert action_to_bits(0.3, CHOICES) == 4  # 1.5 + 2.1 = 3.6
    bits = [action_to_bits(a, CHOICES) for a in np.linspace(0, 1, 7001)]
    assert bits == sorted(bits)
    counts = np.bincount(bits)[2:]
    assert counts.min() > 0.9 * counts.max()  # each width gets about a seventh of [0, 1]
    # Non-contiguous choices (Bit Fusion's 2/4/8): the mapped width snaps to the nearest choice.
    assert [action_to_bits(a, (2, 4, 8)) for a in (0.0, 0.3, 0.45, 1.0)] == [2, 4, 4, 8]


def test_exploration_noise_stays_in_the_unit_interval_around_the_mean():
    rng = np.random.default_rng(0)
    draws = np.array([truncated_normal(rng, 0.9, 0.2) for _ in range(4000)])
    assert draws.min() >= 0.0 and draws.max() <= 1.0
    assert 0.75 < draws.mean() < 0.85  # pulled below 0.9 by the cut at 1
    assert truncated_normal(rng, 0.3, 0.0) == 0.3


def _proxy_accuracy(config) -> float:
    """Monotone in every bitwidth, like a real accuracy."""
    return 0.1 + 0.75 * (np.mean(config.w_bits) + np.mean(config.a_bits) - 4) / 12


def _run(agent: Haq, episodes: int) -> list[str]:
    hashes = []
    for _ in range(episodes):
        configs = agent.ask(1)
        agent.tell(configs, [_proxy_accuracy(c) for c in configs])
        hashes += [c.hash for c in configs]
    return hashes


ARGS = HaqArgs(warmup=3, batch_size=16)


def test_every_episode_meets_the_budget_and_the_agent_learns(point):
    agent = Haq(point, seed=0, fp_val_acc=0.85, args=ARGS)
    before = {k: v.clone() for k, v in agent.actor.state_dict().items()}
    for _ in range(6):
        (config,) = agent.ask(1)
        assert point.fits(config)
        agent.tell([config], [_proxy_accuracy(config)])
    assert agent.episode == 6
    assert agent.replay.size == 6 * 2 * len(point.layers)
    assert agent.moving_average is not None
    changed = [not torch.equal(before[k], v) for k, v in agent.actor.state_dict().items()]
    assert all(changed)


def test_a_seeded_run_is_reproducible_and_resumes_exactly(point):
    straight = _run(Haq(point, seed=7, fp_val_acc=0.85, args=ARGS), 6)
    assert straight == _run(Haq(point, seed=7, fp_val_acc=0.85, args=ARGS), 6)
    assert straight[:2] != _run(Haq(point, seed=8, fp_val_acc=0.85, args=ARGS), 2)

    first = Haq(point, seed=7, fp_val_acc=0.85, args=ARGS)
    head = _run(first, 5)  # past warm-up: networks, optimisers, buffer and noise all matter
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    resumed = Haq(point, seed=123, fp_val_acc=0.85, args=ARGS)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    assert head + _run(resumed, 1) == straight
    assert resumed.episode == 6


def test_parallel_episodes_are_switchable(point):
    agent = Haq(point, seed=0, fp_val_acc=0.85, args=HaqArgs(warmup=2, episodes_per_ask=3))
    configs = agent.ask(4)
    assert len(configs) == 3 and len({c.hash for c in configs}) == 3
    agent.tell(configs, [_proxy_accuracy(c) for c in configs])
    assert agent.episode == 3 and agent.replay.size == 3 * 2 * len(point.layers)


def test_warm_up_replay_and_state_follow_haqs_code(point_at):
    """HAQ's loop: random while ``episode <= warmup``, updates once ``episode > warmup``; a
    replay buffer of 128 transitions per layer; the state's previous bits over the top width."""
    point = point_at("latency_ms=0.4x")
    agent = Haq(point, seed=0, fp_val_acc=0.85, args=HaqArgs(warmup=2, batch_size=16))
    assert len(agent.replay.state) == 128 * len(point.layers)
    start = {k: v.clone() for k, v in agent.actor.state_dict().items()}
    _run(agent, 3)  # episodes 0, 1, 2: random, no update
    assert all(torch.equal(start[k], v) for k, v in agent.actor.state_dict().items())
    episode = agent._rollout()  # episode 3: the untrained actor acts, then learns
    prev = episode.states[:, FEATURES.index("prev_action")]
    bits = [action_to_bits(float(a), point.bit_choices) / 8 for a in episode.actions]
    assert prev[0] == 1.0 and np.allclose(prev[1:], bits[:-1])
    agent._pending = [episode]
    agent.tell([None], [0.5])
    assert not all(torch.equal(start[k], v) for k, v in agent.actor.state_dict().items())


def test_under_keep_first_last_every_episode_pins_the_first_and_last_layers(point_at):
    free = point_at("latency_ms=0.4x")
    point = DesignPoint(free.layers, free.bit_choices, free.hw, free.budget, keep_first_last=True)
    agent = Haq(point, seed=0, fp_val_acc=0.85, args=HaqArgs(warmup=2))
    for config in (agent.ask(1)[0] for _ in range(4)):
        assert config.w_bits[0] == config.a_bits[0] == config.w_bits[-1] == config.a_bits[-1] == 8
        assert point.fits(config)
