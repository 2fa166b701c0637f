"""Fused sweeps: the jobs of a sweep that share a shape train as one model, each its own run."""
