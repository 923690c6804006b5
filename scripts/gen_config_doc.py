#!/usr/bin/env python3
"""Writes docs/config.md, the reference of every config key, from the schema in dlion/config.py."""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dlion.config import reference_markdown  # noqa: E402

(ROOT / "docs" / "config.md").write_text(reference_markdown())
print(ROOT / "docs" / "config.md")
