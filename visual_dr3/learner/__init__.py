"""Learner: networks (encoders, twin Q heads, tanh-Gaussian actor), pure CQL/SAC/DR3 losses, diagnostics.

Submodules are imported explicitly (``from visual_dr3.learner import losses, networks``); nothing heavy
is imported here.
"""
