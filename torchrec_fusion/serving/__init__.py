"""Serving: a sharded checkpoint turned into a single-process inference model."""

from torchrec_fusion.serving.export import DataSchema, export_run, load_exported

__all__ = ["DataSchema", "export_run", "load_exported"]
