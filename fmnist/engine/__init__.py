"""The training engine: build a run from its config (build), restore it, and fit it (fit, with a
compute step: step, fused_step, graphs); `runner.train(cfg)` does all of it for one run."""
