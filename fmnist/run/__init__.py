"""A run directory on disk: who holds it (directory), how it stands (status), what to do with
it (plan), its checkpoints and models (checkpoint), where its numbers came from (provenance).

A run directory made by someone else is untrusted input: JSON of any shape reads as
"unreadable", checkpoints load with `weights_only=True`, and models are built only from this
package's registry (`fmnist.models.build_model`).
"""
