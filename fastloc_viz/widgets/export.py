"""Export of the explorer's current state: ``<stem>.html`` (a self-contained report),
``<stem>.json`` (metadata, enabled neurons, the controls' values) and ``<stem>.png`` (the
overlay, when kaleido finds a Chrome/Chromium). Every file is written atomically."""

from __future__ import annotations

import datetime as _dt
import json
import os
import pathlib
from collections.abc import Mapping
from typing import Any

import plotly.graph_objects as go

from ..core.files import write_bytes_atomic, write_text_atomic
from ..core.results import Explanation
from ..views.report import write_report

EXPORT_TIP = "write the current state as HTML + JSON (and PNG when kaleido and Chrome/Chromium are available)"


def export_stem(e: Explanation, path: str | os.PathLike[str] | None, export_dir: pathlib.Path | None) -> pathlib.Path:
    """The stem the files get: ``path`` without its suffix, or a timestamped name in the
    directory ``path``, ``export_dir`` or the current directory."""
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    default = f"fastloc_{e.target}_{e.method}_{stamp}"
    if path is None:
        return (export_dir or pathlib.Path.cwd()) / default
    p = pathlib.Path(path).expanduser()
    return p / default if p.is_dir() else p.with_suffix("")


def export_state(
    stem: pathlib.Path,
    e: Explanation,
    controls: Mapping[str, Any],
    figure: go.Figure | go.FigureWidget,
    *,
    png: bool | None = None,
) -> list[pathlib.Path]:
    """Write the files for ``stem``; ``controls`` joins the JSON (``enabled`` among them).

    ``png``: ``True`` requires the PNG (raises if it cannot be made), ``False`` skips it,
    ``None`` writes it when it can.
    """
    enabled = controls.get("enabled", [n.rank for n in e.neurons or []])
    written = [
        write_report(
            stem.with_suffix(".html"),
            {e.method: e},
            title=f"fastloc_viz · {e.target_name} · neurons {', '.join(map(str, enabled))}",
        )
    ]
    state = {"explanation": e.to_dict(), **controls}
    written.append(write_text_atomic(stem.with_suffix(".json"), json.dumps(state, indent=2), what="export"))
    if png is not False:
        try:
            data = go.Figure(figure).to_image(format="png", scale=2)
        except Exception as err:  # kaleido missing, or no Chrome/Chromium for it
            if png:
                raise RuntimeError(
                    "PNG export needs the kaleido package and a Chrome/Chromium it can find "
                    f"(pip install kaleido; apt-get install chromium): {err}"
                ) from err
        else:
            written.append(write_bytes_atomic(stem.with_suffix(".png"), data, what="export"))
    return written
