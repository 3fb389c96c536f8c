"""Where the shipped configurations follow the papers (issue 14's drifts), checked against the papers' text.

The papers are not part of the repository: their text is read only through the test-data layer
(:func:`fetch_test_data.paper_text`, the ``paper_text`` fixture), which gives ``None`` on a fresh clone.
Each quote in a configuration is pinned by the sha256 of its normalised words (:func:`_words`), recorded
when the quote was checked against the paper file of the pinned sha256. So on a fresh clone the test still
checks that the configurations quote exactly those verified passages; where the paper is present the
quotes are also searched in its text.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest
import yaml

import fetch_test_data
from AutoSegSensitivity.errors import InputError
from AutoSegSensitivity.intensity import PRESETS

REPO = Path(__file__).resolve().parents[2]
PAPER_004 = ("004_17551cd9d88005d8.txt", "03f70b0f05050ad207dd744db8a1b8e1f5b436f513e3619ffad6096e19244754")
"""Lei et al. (paper 004): the file name the data layer looks up and the sha256 of the file the quotes were checked in."""

QUOTES_004 = {  # configuration -> sha256 of the normalised words of each quote, in order
    "lei-sepnet3d-explog": ["98bc9ab7d6b8b8c38f882fc03d620ec3c7882ab369b48baa1d834841c82593a6"],
    "lei-sepnet3d-ath-explog": ["4c419b7f646d7b444e1fa531f4335e2453ce58980e228b79b4706b97a4f0da88"],
}


def _words(text: str) -> str:
    """Lower-case letters and digits only: the paper's LaTeX ($ATH(\\alpha = 0.5) - L_{Exp}$) and the
    comment's plain text (ATH(alpha = 0.5) - L_Exp) compare equal."""
    return re.sub(r"[^a-z0-9]", "", text.lower().replace("\\alpha", "alpha"))


def _quotes(name: str) -> list:
    """The double-quoted passages of a configuration's comments (joined across comment lines)."""
    text = (REPO / "examples" / "configs" / f"{name}.yaml").read_text(encoding="utf-8")
    comments = "\n".join(line.lstrip("# ") for line in text.splitlines() if line.startswith("#"))
    return re.findall(r'"([^"]+)"', comments.replace("\n", " "))


def _digest(quote: str) -> str:
    return hashlib.sha256(_words(quote).encode("ascii")).hexdigest()


def test_lei_sepnet_configs_use_slf1_and_quote_the_verified_passages():
    """Runs everywhere (no paper needed): SLF1 as printed, and the quotes are the passages verified in the paper."""
    for name, pinned in QUOTES_004.items():
        path = REPO / "examples" / "configs" / f"{name}.yaml"
        assert yaml.safe_load(path.read_text(encoding="utf-8"))["intensity"] == "SLF1", name
        quotes = _quotes(name)
        assert [_digest(q) for q in quotes] == pinned, (name, quotes)
        assert any("slf1" in _words(q) for q in quotes)
    assert PRESETS["SLF1"].hu_points == (-500, -200, 200, 1500)


def test_lei_sepnet_quotes_are_in_the_paper(paper_text):
    """The quote-in-text check: only where the data layer has the paper (:func:`fetch_test_data.paper_text`)."""
    text = paper_text(*PAPER_004)
    if text is None:
        pytest.skip(f"paper {PAPER_004[0]} is not at hand (a fresh clone; set ${fetch_test_data.ENV_PAPERS} to a "
                    "folder holding it): the quotes were checked against their pinned hashes only")
    paper = _words(text)
    for name in QUOTES_004:
        quotes = _quotes(name)
        assert quotes and all(_words(q) in paper for q in quotes), (name, quotes)


def test_paper_text_layer(tmp_path):
    """The data layer: $AUTOSEGSENS_PAPERS before the folder beside the clone; None when absent; a different
    file (other sha256) is an InputError naming it, never silently used. Both folders are made in tmp_path."""
    beside, env_dir = tmp_path / "papers-beside", tmp_path / "env"
    body = "These networks were trained with $ATH(\\alpha = 0.5) - L_{Exp}$ and SLF1.\n"
    pin = hashlib.sha256(body.encode()).hexdigest()
    assert fetch_test_data.paper_text("p.txt", pin, environ={}, beside=beside) is None
    beside.mkdir(parents=True)
    (beside / "p.txt").write_text(body, encoding="utf-8")
    assert fetch_test_data.paper_text("p.txt", pin, environ={}, beside=beside) == body
    env = {fetch_test_data.ENV_PAPERS: str(env_dir)}
    assert fetch_test_data.paper_text("p.txt", pin, environ=env, beside=beside) is None  # the variable wins
    env_dir.mkdir()
    (env_dir / "p.txt").write_text(body + "edited\n", encoding="utf-8")
    with pytest.raises(InputError, match="p.txt: sha256: expected " + pin):
        fetch_test_data.paper_text("p.txt", pin, environ=env, beside=beside)
    assert _digest("ATH(alpha = 0.5) - L_Exp and SLF1") == _digest("$ATH(\\alpha = 0.5) - L_{Exp}$ and SLF1")
