"""Locate data files (Avro schemas, broker files) in a wheel or a checkout."""

from __future__ import annotations

from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent
_CHECKOUT_ROOT = _PACKAGE_DIR.parent

# Wheel layout (pyproject force-include) first; a checkout or an editable
# install keeps the files at the repository's top level.
_LOCATIONS = {
    "schemas": (_PACKAGE_DIR / "_data" / "schemas", _CHECKOUT_ROOT / "schemas"),
    "kafka": (_PACKAGE_DIR / "_data" / "kafka", _CHECKOUT_ROOT / "deploy" / "kafka"),
    "samples": (_PACKAGE_DIR / "_data" / "samples", _CHECKOUT_ROOT / "samples"),
}


def data_dir(name: str) -> Path:
    """Return the directory holding the named data files (`schemas`, `kafka` or `samples`)."""
    for candidate in _LOCATIONS[name]:
        if candidate.is_dir():
            return candidate
    searched = ", ".join(str(p) for p in _LOCATIONS[name])
    raise FileNotFoundError(f"kbatch data directory {name!r} not found (searched {searched})")
