"""Baseline search methods (HAQ-style DDPG, uniform, Optuna TPE, random), one file each.

They share the evaluator and hardware cost models of ``aqgan_ray``; see issue 5.
"""
