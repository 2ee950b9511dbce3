"""The README's configuration table names every setting the services read."""

from __future__ import annotations

from pathlib import Path

from services.settings_doc import all_variables

README = Path(__file__).resolve().parents[2] / "README.md"


def test_every_setting_is_in_the_readme() -> None:
    text = README.read_text()
    missing = [v for v in all_variables() if f"`{v}`" not in text]
    assert missing == [], f"README lacks {missing}; run python -m services.settings_doc"
    assert len(all_variables()) > 50
