"""Foundations every folder may use: atomic file writes, progress output and small numeric helpers."""
