"""The review page (``autosegsens review``): a cohort's thresholds reviewed in the browser on trame-slicer.

* :mod:`.cohort`: the cases, their per-case counts (``tune``'s pass), tuned thresholds, one case's volumes and
  the hand-set threshold written to ``thresholds.json`` (no Slicer, no trame);
* :mod:`.scene`: an opened case as MRML nodes and the threshold slider, through :mod:`AutoSegSensitivity.mrml`;
* :mod:`.chart`: Dice / NSD vs threshold as a PNG;
* :mod:`.app`: the trame page (trame-slicer's SlicerApp, layout and views); :mod:`.server`: starting it.

Needs the optional extra ``pip install -e ".[review]"`` (trame-slicer); importing this package does not.
"""
