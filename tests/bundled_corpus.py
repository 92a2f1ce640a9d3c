"""What the bundled model was taught (scripts/make_models.py's corpus), for the tests that ask it what it knows."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "make_models.py"
_spec = importlib.util.spec_from_file_location("make_models", _SCRIPT)
make_models = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("make_models", make_models)  # its dataclasses look their module up there
_spec.loader.exec_module(make_models)  # stdlib imports only at the top: torch & co. are imported where used

# country -> capital, every pair of the corpus
CAPITALS: dict[str, str] = {country: city for country, city, _, _ in make_models.CAPITALS}


def answer(country: str) -> str:
    """The bundled model's reply to a question about a country's capital, as it was taught to give it."""
    return f"The capital of {country} is {CAPITALS[country]}."
