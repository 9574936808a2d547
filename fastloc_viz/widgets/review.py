""":class:`BoxReview`: a gallery for reviewing the boxes ``fastloc-viz boxes`` proposed.

Pages of thumbnails, each photo at its own aspect ratio with its box (cyan: undecided,
green: accepted, red: rejected), sorted by the box's score (the share of the map's mass inside
the box; a whole-image box or a box from a diffuse map is marked so) and filtered by class
(label) and status; an image boxed for several labels (``boxes(..., targets="positive")``) has
one card per label. Per image: accept, reject, undo, adjust (drag the box with
``jupyter-bbox-widget``, or move a per-image threshold, which re-boxes the image's map), or
open it in the :class:`NeuronExplorer`.
Keyboard (``ipyevents``, on the gallery once clicked): ``a`` accept, ``r`` reject, ``u``
undo, ``e`` edit, ``←`` / ``→`` select, ``n`` / ``p`` next / previous page. Decisions are
kept by :class:`fastloc_viz.collection.review_store.ReviewStore`: saved atomically as they are made, read back
when the gallery is opened again (after a kernel restart). ``export`` writes the accepted
boxes as COCO.
"""

from __future__ import annotations

import html
import os
import warnings
from pathlib import Path
from typing import Any

import ipywidgets as W
import numpy as np
from PIL import Image, ImageDraw

from ..collection.review_store import ReviewStore
from ..core.raster import encode, image_uri
from ..methods import default_of, get_method

COLORS = {None: (0, 229, 255), "accepted": (40, 200, 80), "rejected": (230, 50, 50)}
SCORE_TIP = "the box&#39;s score: the share of the map&#39;s mass inside the box"
KIND_NOTE = {"whole": " <span class='fastloc-review-kind' style='color:#c62828'>whole image</span>",
             "diffuse": " <span class='fastloc-review-kind' style='color:#c62828'>diffuse map</span>"}


def _photo(path: str, side: int) -> Image.Image:
    """The file as ``explain`` reads it (the one reader: TIFF, DICOM and FITS windowed, the
    same page / frame / HDU), decoded at no less than ``side`` where the format allows."""
    from ..core.raster import to_uint8
    from ..imaging.batch import read_for_model

    return Image.fromarray(to_uint8(read_for_model(path, (side, side)).pixels))


def _thumbnail(path: str, box, status, size: int, photo: tuple[int, int]) -> tuple[bytes, str]:
    """The photo shrunk to ``size`` on its longer side (its own aspect), with the box; and
    ``""``, or why the file cannot be read (a grey card then says so)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            img, reason = _photo(path, size), ""
        except Exception as e:  # noqa: BLE001 - a file gone or broken since the run: a grey card
            from ..imaging.batch import unreadable_reason

            img, reason = Image.new("RGB", _fit_size(photo, size), (200, 200, 200)), unreadable_reason(e)
    return _draw(img, box, status, size, photo), reason


def _fit_size(photo: tuple[int, int], side: int) -> tuple[int, int]:
    """``(w, h)`` of ``photo`` shrunk to ``side`` on its longer side."""
    f = side / max(photo)
    return (max(1, round(photo[0] * f)), max(1, round(photo[1] * f)))


def _draw(img: Image.Image, box, status, size: int, photo: tuple[int, int] | None = None) -> bytes:
    w0, h0 = photo or img.size
    f = size / max(img.size)
    img = img.resize((max(1, round(img.width * f)), max(1, round(img.height * f))))
    sx, sy = img.width / w0, img.height / h0
    x0, y0, x1, y1 = box
    ImageDraw.Draw(img).rectangle([x0 * sx, y0 * sy, x1 * sx - 1, y1 * sy - 1], outline=COLORS[status], width=3)
    return encode(np.asarray(img), "PNG", optimize=False)


class BoxReview(W.VBox):
    """Review the boxes of a collection.

    Args:
        boxes_file_or_source: the COCO JSON of ``fastloc-viz boxes``; or a source (a folder,
            ImageFolder tree or CSV) to run ``boxes`` on first (then ``bundle`` is needed and
            the boxes go to ``out``, default ``<source>.boxes.json`` beside it).
        bundle: the model, for the per-image threshold and the explorer (optional otherwise).
        page_size: thumbnails per page; thumb: their longer side in pixels.
        decisions: where decisions are saved (default ``<boxes>.review.json``).
        method, targets: for a source, how ``boxes`` runs (``targets="positive"``: a box per
            label found).

    The methods taking ``file`` (``accept``, ``reject``, ``undo``, ``edit``, ``explore``)
    take a proposal's key: its file, or ``file#<class id>`` for an image with several labels.
    """

    def __init__(self, boxes_file_or_source: str | os.PathLike, bundle: Any = None, *, page_size: int = 12,
                 thumb: int = 160, decisions: str | os.PathLike | None = None, out: str | os.PathLike | None = None,
                 method: str = "fastloc", targets: str | list = "top1") -> None:
        src = Path(boxes_file_or_source)
        if src.suffix.lower() != ".json":
            if bundle is None:
                raise ValueError("BoxReview on a source (not a boxes .json) needs bundle= to compute the boxes")
            from ..collection.boxes import boxes

            out = Path(out) if out else src.with_name(src.name + ".boxes.json")
            boxes(bundle, src, out, targets=targets, method=method, workers=0, progress=False)
            src = out
        self.store = ReviewStore(src, decisions=decisions)
        self.bundle, self.page_size, self.thumb = bundle, page_size, thumb
        self.page, self.selected = 0, 0
        self._maps: dict[str, Any] = {}
        classes = [("all classes", None)] + [(f"{n} ({c})", i) for i, n, c in self.store.classes()]
        # index=0, not value=None: a Dropdown given value None selects nothing and shows blank
        self.class_menu = W.Dropdown(options=classes, index=0, description="class")
        self.sort_menu = W.Dropdown(options=[("score, best first", "-score"), ("score, worst first", "score"),
                                             ("file", "file"), ("class", "class")], value="-score", description="sort")
        self.status_menu = W.Dropdown(options=[("all", "any"), ("undecided", None), ("accepted", "accepted"),
                                               ("rejected", "rejected")], value="any", description="show")
        self.prev_button, self.next_button = W.Button(description="◀", layout=W.Layout(width="40px")), \
            W.Button(description="▶", layout=W.Layout(width="40px"))
        self.page_label, self.counts_label = W.HTML(), W.HTML()
        self.export_path = W.Text(value=str(src.with_name(src.stem + ".accepted.json")), description="export to",
                                  layout=W.Layout(width="420px"))
        self.export_button = W.Button(description="export accepted (COCO)", icon="download")
        self.message = W.HTML()
        self.grid = W.GridBox(layout=W.Layout(grid_template_columns=f"repeat(auto-fill, {thumb + 24}px)",
                                              grid_gap="8px"))
        self.editor = W.VBox()
        self.explorer_area = W.Output()
        for w in (self.class_menu, self.sort_menu, self.status_menu):
            w.observe(lambda _: self._go(0), names="value")
        self.prev_button.on_click(lambda _: self._go(self.page - 1))
        self.next_button.on_click(lambda _: self._go(self.page + 1))
        self.export_button.on_click(lambda _: self.export())
        super().__init__([
            W.HBox([self.class_menu, self.sort_menu, self.status_menu]),
            W.HBox([self.prev_button, self.page_label, self.next_button, self.counts_label]),
            self.grid, W.HBox([self.export_path, self.export_button]), self.message, self.editor,
            self.explorer_area,
        ])
        self.add_class("fastloc-box-review")
        self._keys()
        self.refresh()

    # ---------------------------------------------------------------- the page
    def visible(self) -> list:
        """The proposals passing the filters, in the chosen order."""
        return self.store.proposals(sort=self.sort_menu.value, category=self.class_menu.value,
                                    status=self.status_menu.value)

    def _go(self, page: int) -> None:
        pages = max(1, -(-len(self.visible()) // self.page_size))
        self.page = min(max(page, 0), pages - 1)
        self.selected = 0
        self.refresh()

    def refresh(self) -> None:
        items = self.visible()
        pages = max(1, -(-len(items) // self.page_size))
        self.page = min(self.page, pages - 1)
        self.current = items[self.page * self.page_size:(self.page + 1) * self.page_size]
        self.selected = min(self.selected, max(0, len(self.current) - 1))
        self.page_label.value = f"&nbsp;page {self.page + 1} of {pages} · {len(items)} images&nbsp;"
        c = self.store.counts()
        self.counts_label.value = (f"&nbsp;accepted {c['accepted']} · rejected {c['rejected']} · "
                                   f"undecided {c['undecided']} · skipped files {len(self.store.skipped)}")
        self.cards = [self._card(i, p) for i, p in enumerate(self.current)]
        self.grid.children = self.cards

    def _card(self, i: int, p) -> W.VBox:
        png, reason = _thumbnail(p.path, p.final_box, p.status, self.thumb, (p.width, p.height))
        img = W.Image(value=png, format="png", layout=W.Layout(max_width=f"{self.thumb}px"))
        why = f"<br><span style='color:#b71c1c' title='{html.escape(reason, quote=True)}'>cannot be read</span>" \
            if reason else ""
        label = W.HTML(f"<div style='font-size:11px;line-height:1.25'><b>{p.category}</b> "
                       f"<span title='{SCORE_TIP}'>{p.score:.2f}</span>{KIND_NOTE.get(p.kind, '')}<br>"
                       f"<span title='{html.escape(p.path, quote=True)}'>{html.escape(Path(p.file).name[:24])}</span>"
                       f"<br>{p.status or 'undecided'}{why}</div>")
        buttons = []
        for text, tip, action in (("✓", "accept (a)", self.accept), ("✗", "reject (r)", self.reject),
                                  ("✎", "adjust (e)", self.edit), ("🔍", "open in the explorer", self.explore)):
            b = W.Button(description=text, tooltip=tip, layout=W.Layout(width="36px", padding="0"))
            b.on_click(lambda _, k=p.key, a=action: a(k))
            b.add_class(f"fastloc-review-{action.__name__}")
            buttons.append(b)
        border = "2px solid #1e88e5" if i == self.selected else "1px solid #ddd"
        card = W.VBox([img, label, W.HBox(buttons)], layout=W.Layout(border=border, padding="4px"))
        card.add_class("fastloc-review-card")
        return card

    # ---------------------------------------------------------------- decisions
    def _file(self, file: str | None) -> str | None:
        if file is not None:
            return file
        return self.current[self.selected].key if self.current else None

    def accept(self, file: str | None = None, box=None, threshold: float | None = None) -> None:
        """Accept ``file``'s box (the selected image's by default), or ``box``; saved at once."""
        f = self._file(file)
        if f is not None:
            self.store.accept(f, box, threshold=threshold)
            self.refresh()

    def reject(self, file: str | None = None) -> None:
        f = self._file(file)
        if f is not None:
            self.store.reject(f)
            self.refresh()

    def undo(self, file: str | None = None) -> None:
        f = self._file(file)
        if f is not None:
            self.store.undo(f)
            self.refresh()

    def export(self, path: str | os.PathLike | None = None) -> Path:
        """Write the accepted boxes as COCO (to the path in the export box by default)."""
        out = self.store.export_coco(path or self.export_path.value)
        self.message.value = f"wrote {self.store.counts()['accepted']} accepted boxes to <code>{out}</code>"
        return out

    # ---------------------------------------------------------------- adjusting
    def edit(self, file: str | None = None) -> None:
        """Show the editor for ``file``: the box to drag, and a threshold slider (with a model)."""
        f = self._file(file)
        if f is None:
            return
        p = self.store[f]
        try:
            from jupyter_bbox_widget import BBoxWidget
        except ImportError:
            raise ImportError("dragging boxes needs jupyter-bbox-widget: pip install 'fastloc-viz[review]'") from None

        f_disp = 512 / max(p.width, p.height)  # the box is in the photo's pixels
        shown = _photo(p.path, 512).resize(_fit_size((p.width, p.height), 512))
        x0, y0, x1, y1 = p.final_box
        bbox = BBoxWidget(image=image_uri(np.asarray(shown)),
                          classes=[p.category], hide_buttons=True,
                          bboxes=[{"x": x0 * f_disp, "y": y0 * f_disp, "width": (x1 - x0) * f_disp,
                                   "height": (y1 - y0) * f_disp, "label": p.category}])
        self.bbox_widget, self._edit_scale, self._edit_file = bbox, f_disp, f
        slider = W.FloatSlider(value=self._threshold(p), min=0.05, max=0.95, step=0.01, description="threshold",
                               disabled=self.bundle is None)
        slider.observe(lambda ch: self._rethreshold(ch["new"]), names="value")
        self.threshold_slider = slider
        save = W.Button(description="accept this box", button_style="success")
        save.on_click(lambda _: self.accept_edit())
        self.editor.children = [W.HTML(f"<b>{p.file}</b> · {p.category} · drag the box's corners"), bbox,
                                W.HBox([slider, save])]

    def _threshold(self, p) -> float:
        """The image's threshold: the one decided, else the run's, else the method's default."""
        if p.decision and p.decision.get("threshold") is not None:
            return float(p.decision["threshold"])
        if "threshold" in p.params:
            return float(p.params["threshold"])
        return float(default_of(self.store.info.get("method", "fastloc"), "threshold"))

    def edited_box(self) -> tuple[int, int, int, int]:
        b = self.bbox_widget.bboxes[0]
        s = self._edit_scale
        return (round(b["x"] / s), round(b["y"] / s), round((b["x"] + b["width"]) / s),
                round((b["y"] + b["height"]) / s))

    def accept_edit(self) -> None:
        t = self.threshold_slider.value if self.bundle is not None else None
        self.accept(self._edit_file, self.edited_box(), threshold=t)
        self.editor.children = []

    def _rethreshold(self, t: float) -> None:
        """Re-box the image's map at threshold ``t`` (one explain call per image, cached)."""
        from ..core import maps as M
        from ..core.results import box_to_original
        from . import explain

        p = self.store[self._edit_file]
        if self._edit_file not in self._maps:
            # the run's own parameters (k, combine, ...): the map the proposed box came from
            method = self.store.info.get("method", "fastloc")
            own = get_method(method).defaults()
            e = explain(self.bundle, p.path, method=method, target=p.category_id,
                        **{k: v for k, v in p.params.items() if k in own})
            self._maps[self._edit_file] = e
        e = self._maps[self._edit_file]
        grid_box = M.map_to_box(e.saliency, t, e.params["components"])
        if grid_box is None:
            self.bbox_widget.bboxes = []
            return
        box = box_to_original(grid_box, e.input_size, e.photo_size)
        s = self._edit_scale
        self.bbox_widget.bboxes = [{"x": box[0] * s, "y": box[1] * s, "width": (box[2] - box[0]) * s,
                                    "height": (box[3] - box[1]) * s, "label": p.category}]

    def explore(self, file: str | None = None):
        """Open ``file`` in the :class:`NeuronExplorer` (below the gallery)."""
        f = self._file(file)
        if f is None or self.bundle is None:
            self.message.value = "the explorer needs the model: BoxReview(..., bundle=fv.load_model(...))"
            return None
        from .explorer import NeuronExplorer

        p = self.store[f]
        ex = NeuronExplorer(self.bundle, p.path, target=p.category_id)
        self.explorer_area.clear_output()
        with self.explorer_area:
            from IPython.display import display

            display(ex)
        return ex

    # ---------------------------------------------------------------- keyboard
    def _keys(self) -> None:
        try:
            from ipyevents import Event
        except ImportError:  # the shortcuts are optional
            return
        self._events = Event(source=self, watched_events=["keydown"], prevent_default_action=True)
        self._events.on_dom_event(self._on_key)

    def _on_key(self, event: dict) -> None:
        key = event.get("key")
        n = len(self.current)
        if key in ("a", "r", "u", "e"):
            {"a": self.accept, "r": self.reject, "u": self.undo, "e": self.edit}[key]()
        elif key == "ArrowRight" and n:
            self.selected = (self.selected + 1) % n
            self.refresh()
        elif key == "ArrowLeft" and n:
            self.selected = (self.selected - 1) % n
            self.refresh()
        elif key == "n":
            self._go(self.page + 1)
        elif key == "p":
            self._go(self.page - 1)

