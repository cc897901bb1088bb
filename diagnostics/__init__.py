"""Diagnostics of plasticity: curvature of loss closures and rank measures of features.

Built by the diagnostics issue: Hessian/GGN spectra (Lanczos, SLQ density, epsilon-rank) of
any loss given as a function of parameters, and rank measures of the hidden features that
networks return from their forward pass. Diagnostics never change parameters, optimizer state
or the run's random streams, and know nothing about PPO, SAC or the supervised stream.
"""
