"""Kernel-side programs of vfstrace, shipped as package data.

The C sources here are read by path (never assembled from strings in
Python); options reach them as -D defines built from typed values.
"""

from pathlib import Path

SOURCE_DIR = Path(__file__).resolve().parent


def source(name: str) -> str:
    """Text of one kernel-side source file in this directory."""
    return (SOURCE_DIR / name).read_text()
