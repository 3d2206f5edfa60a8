"""Showing a run: the self-contained report page and its figures, the notebook display, and `compare`
(torch-free; written from the run folder's files alone)."""
