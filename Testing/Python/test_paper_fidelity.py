"""Where the shipped configurations follow the papers (issue 14's drifts), checked against the papers' text."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from AutoSegSensitivity.intensity import PRESETS

REPO = Path(__file__).resolve().parents[2]
PAPER_004 = REPO.parent / "shared" / "papers" / "004_17551cd9d88005d8.txt"


def _words(text: str) -> str:
    """Lower-case letters and digits only: the paper's LaTeX ($ATH(\\alpha = 0.5) - L_{Exp}$) and the
    comment's plain text (ATH(alpha = 0.5) - L_Exp) compare equal."""
    return re.sub(r"[^a-z0-9]", "", text.lower().replace("\\alpha", "alpha"))


def test_lei_sepnet_configs_use_slf1_and_quote_the_paper():
    paper = _words(PAPER_004.read_text(encoding="utf-8"))
    for name in ("lei-sepnet3d-explog", "lei-sepnet3d-ath-explog"):
        path = REPO / "examples" / "configs" / f"{name}.yaml"
        text = path.read_text(encoding="utf-8")
        assert yaml.safe_load(text)["intensity"] == "SLF1", name
        assert PRESETS["SLF1"].hu_points == (-500, -200, 200, 1500)
        quotes = re.findall(r'"([^"]+)"', "\n".join(line.lstrip("# ") for line in text.splitlines()
                                                    if line.startswith("#")).replace("\n", " "))
        assert quotes and all(_words(q) in paper for q in quotes), (name, quotes)
        assert any("slf1" in _words(q) for q in quotes)
