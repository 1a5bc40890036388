"""The exit gallery: which test images the saved model let leave at each exit, and what it said.

Choosing the images is a pure function of the run's per-sample outputs
(:func:`gallery_from_outputs`): ``results.json`` keeps the chosen indices and the class-by-exit
shares (:class:`~leenet.report.results.GallerySection`), and a small file of uint8 thumbnails
beside it (:func:`write_gallery_file`, ``gallery.npz``) lets ``leenet report`` redraw the
gallery without the dataset.
"""

from __future__ import annotations

import base64
import io
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from leenet.errors import LeenetError, brief
from leenet.files import replace_atomically
from leenet.report.common import esc, setting
from leenet.report.plots import new_figure, save
from leenet.report.results import GalleryExit, GallerySection, Results

GALLERY_FILE = "gallery.npz"
PER_EXIT = 12  # images drawn per exit, and of the final exit's mistakes
THUMB_MAX = 96  # pixels: larger images are shrunk by averaging whole blocks of pixels
SHOWN_SIDE = 64  # pixels: small images are enlarged by a whole factor (pixelated) to about this
FIELDS = ("indices", "images", "labels", "predictions", "exit_index", "final_predictions", "class_names")


@dataclass(frozen=True)
class Thumbnails:
    """The gallery's images and what the model said of them; K images, one row per test index."""

    indices: np.ndarray  # (K,) int64 test-split indices, sorted
    images: np.ndarray  # (K, H, W, C) uint8 as the dataset stores them, C = 1 (grey) or 3 (RGB)
    labels: np.ndarray  # (K,) int64 true class
    predictions: np.ndarray  # (K,) int64 the saved model's prediction, at the exit it took
    exit_index: np.ndarray  # (K,) int64 the exit each image left at
    final_predictions: np.ndarray  # (K,) int64 the final exit's (the backbone's) prediction
    class_names: tuple[str, ...]


def _draw(pool: np.ndarray, k: int, rng: np.random.Generator) -> tuple[int, ...]:
    return tuple(int(i) for i in np.sort(rng.choice(pool, size=min(k, len(pool)), replace=False)))


def gallery_from_outputs(
    images: Any, labels: Any, predictions: Any, exit_index: Any, final_predictions: Any,
    exit_names: Sequence[str], class_names: Sequence[str], *, value_max: float = 255.0, per_exit: int = PER_EXIT,
    seed: int = 0,
) -> tuple[GallerySection, Thumbnails]:
    """Draw the gallery from the saved model's outputs on the test split.

    Args:
        images: (N, C, H, W) uint8 test images, un-normalized; anything an int array indexes
            (a numpy array, a CPU tensor, a lazy loader): only the drawn images are read.
        labels: (N,) true classes.
        predictions: (N,) the routed model's prediction (at the exit each sample took).
        exit_index: (N,) the exit each sample took, in ``0..len(exit_names)-1``.
        final_predictions: (N,) the final exit's prediction for every sample.
        exit_names, class_names: names of the E exits and the C classes.
        value_max: the stored value of full brightness (16 for scikit-learn's digits); the
            thumbnails are stretched to 0..255.
        per_exit: images drawn per exit (and of the final exit's mistakes).
        seed: of the draw; the same outputs and seed draw the same images.

    Returns:
        The section for ``results.json`` and the thumbnails for :func:`write_gallery_file`.
    """
    labels, predictions, exit_index, final = (np.asarray(a).astype(np.int64).reshape(-1)
                                              for a in (labels, predictions, exit_index, final_predictions))
    n, n_exits, n_classes = len(labels), len(exit_names), len(class_names)
    if not (len(predictions) == len(exit_index) == len(final) == n) or n == 0:
        raise ValueError(f"gallery outputs disagree in length: labels {n}, predictions {len(predictions)}, "
                         f"exit_index {len(exit_index)}, final_predictions {len(final)}")
    if exit_index.min() < 0 or exit_index.max() >= n_exits:
        raise ValueError(f"exit_index must lie in 0..{n_exits - 1}, got {exit_index.min()}..{exit_index.max()}")
    rng = np.random.default_rng(seed)
    exits = tuple(GalleryExit(name=str(name), left=int((exit_index == e).sum()),
                              indices=_draw(np.flatnonzero(exit_index == e), per_exit, rng))
                  for e, name in enumerate(exit_names))
    wrong = np.flatnonzero(final != labels)
    per_class = np.zeros((n_classes, n_exits))
    np.add.at(per_class, (labels, exit_index), 1.0)
    share = per_class / np.maximum(per_class.sum(1, keepdims=True), 1.0)  # a class without test images: zeros
    section = GallerySection(
        file=GALLERY_FILE, seed=seed, total=n, class_names=tuple(map(str, class_names)), exits=exits,
        final_wrong=_draw(wrong, per_exit, rng), final_wrong_count=len(wrong),
        class_exit_share=tuple(tuple(round(float(v), 4) for v in row) for row in share))
    idx = np.array(sorted({i for e in exits for i in e.indices} | set(section.final_wrong)), dtype=np.int64)
    thumbs = Thumbnails(indices=idx, images=_thumbnails(images, idx, value_max), labels=labels[idx],
                        predictions=predictions[idx], exit_index=exit_index[idx], final_predictions=final[idx],
                        class_names=section.class_names)
    return section, thumbs


def _thumbnails(images: Any, idx: np.ndarray, value_max: float) -> np.ndarray:
    """(K, H, W, C) uint8 images ``idx`` of ``images`` (N, C, H, W), 0..255, at most THUMB_MAX pixels a side."""
    picked = np.asarray(images[idx]) if len(idx) else np.zeros((0, 1, 1, 1), np.uint8)
    if picked.dtype != np.uint8 or picked.ndim != 4 or picked.shape[1] not in (1, 3):
        raise ValueError(f"gallery images must be (N, 1 or 3, H, W) uint8 as stored, not normalized; got "
                         f"{picked.dtype} of shape {tuple(picked.shape)}")
    factor, pixels = math.ceil(max(picked.shape[2:]) / THUMB_MAX), picked.astype(np.float32)
    if factor > 1:
        k, c, h, w = picked.shape
        pixels = pixels[:, :, : h - h % factor, : w - w % factor]
        pixels = pixels.reshape(k, c, h // factor, factor, w // factor, factor)
        pixels = pixels.mean((3, 5))
    pixels = (pixels * (255.0 / value_max)).round().clip(0, 255).astype(np.uint8)
    return np.ascontiguousarray(pixels.transpose(0, 2, 3, 1))


def write_gallery_file(run_dir: str | os.PathLike, thumbnails: Thumbnails) -> Path:
    """Save ``thumbnails`` as ``run_dir/gallery.npz`` (compressed, no pickles), atomically; returns the path."""
    fields = {name: getattr(thumbnails, name) for name in FIELDS}
    arrays = {**fields, "class_names": np.array(thumbnails.class_names, dtype=str)}
    return replace_atomically(Path(run_dir) / GALLERY_FILE, lambda f: np.savez_compressed(f, **arrays))


def read_gallery_file(path: str | os.PathLike) -> Thumbnails:
    """Load a gallery file; a missing or damaged one raises a one-line LeenetError."""
    try:
        with np.load(Path(path), allow_pickle=False) as data:
            fields = {name: data[name] for name in FIELDS}
    except (OSError, ValueError, KeyError, EOFError) as exc:
        raise LeenetError(f"cannot read the gallery file {path} ({brief(exc, 80)}): rerun `leenet run` "
                          "to write it again") from None
    k = len(fields["indices"])
    images = fields["images"]
    if images.dtype != np.uint8 or images.ndim != 4 or len(images) != k or images.shape[-1] not in (1, 3) or any(
            len(fields[name]) != k for name in FIELDS[2:6]):
        raise LeenetError(f"the gallery file {path} is damaged (its arrays disagree): rerun `leenet run`")
    ints = {name: fields[name].astype(np.int64) for name in ("indices", *FIELDS[2:6])}
    return Thumbnails(images=images, class_names=tuple(str(c) for c in fields["class_names"]), **ints)


def plot_class_exits(section: GallerySection, path: Path) -> Path:
    """Heatmap: the share of each class's test images leaving at each exit (rows sum to 100 %)."""
    share = np.array(section.class_exit_share)
    n_classes, n_exits = share.shape
    fig = new_figure(figsize=_heatmap_size(section))
    ax = fig.subplots()
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1, aspect="auto")
    if n_classes <= 40:
        for (c, e), value in np.ndenumerate(share):
            ax.text(e, c, f"{value:.0%}", ha="center", va="center", fontsize=9,
                    color="white" if value > 0.6 else "#1c2833")
        ax.set_yticks(range(n_classes), section.class_names, fontsize=8)
    ax.set_xticks(range(n_exits), [e.name for e in section.exits], fontsize=8)
    ax.set(xlabel="exit", ylabel="true class")
    ax.set_title("share of each class leaving at each exit", fontsize=10)
    fig.colorbar(image, ax=ax, shrink=0.8, format=lambda v, _: f"{v:.0%}")
    return save(fig, path)


def _heatmap_size(section: GallerySection) -> tuple[float, float]:
    """The heatmap's figure size in inches: a column per exit, a row per class (at most 40 rows drawn tall)."""
    return 0.9 * len(section.exits) + 2.6, 0.28 * min(len(section.class_names), 40) + 1.4


def _png(image: np.ndarray) -> str:
    """One (H, W, C) uint8 image as a PNG data URI, in its own colours (grey stays grey)."""
    from matplotlib.image import imsave  # matplotlib is loaded by the first drawing, not with LEENet

    buffer = io.BytesIO()
    if image.shape[-1] == 1:
        imsave(buffer, image[..., 0], cmap="gray", vmin=0, vmax=255, format="png")
    else:
        imsave(buffer, image, format="png")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _strip(thumbs: Thumbnails, indices: Sequence[int], exit_names: Sequence[str], final: bool) -> str:
    """One row of captioned thumbnails: the prediction (✗ when wrong) over the true class."""
    rows = {int(i): r for r, i in enumerate(thumbs.indices)}
    names, figures = thumbs.class_names, []
    for index in indices:
        r = rows[index]
        image, label = thumbs.images[r], int(thumbs.labels[r])
        said = int(thumbs.final_predictions[r] if final else thumbs.predictions[r])
        scale = max(1, round(SHOWN_SIDE / max(image.shape[:2])))
        wrong = said != label
        where = f"<br><small>left at {esc(exit_names[int(thumbs.exit_index[r])])}</small>" if final else ""
        alt = f"test image {index}: predicted {names[said]}, true {names[label]}"
        figures.append(
            f"<figure class='thumb{' wrong' if wrong else ''}' style='width:{max(64, scale * image.shape[1] + 8)}px'>"
            f"<img src='{_png(image)}' alt='{esc(alt)}' "
            f"width='{scale * image.shape[1]}' height='{scale * image.shape[0]}'><figcaption>"
            f"{'✗ ' if wrong else ''}<b>{esc(names[said])}</b><br><small>true {esc(names[label])}</small>"
            f"{where}</figcaption></figure>")
    return f"<div class='strip'>{''.join(figures)}</div>" if figures else "<p class='note'>none</p>"


def gallery_html(results: Results, run_dir: Path, img: Callable[[Path, str], str]) -> str:
    """The ``<section id="gallery">`` of the report; says why when the run has no gallery or lost its file.

    Args:
        results: the run's results; ``results.gallery`` says which images to show.
        run_dir: where the thumbnails file is, and where ``class_exits.png`` is written.
        img: turns a PNG path and its alt text into an embedded ``<img>`` tag.
    """
    head = "<section id='gallery'><h2>Exit gallery</h2>"
    if (section := results.gallery) is None:
        why = ("a multi-seed benchmark keeps no per-sample outputs of its models, and the gallery is drawn from "
               "them" if results.seeds is not None else "this run predates it (its results.json has no gallery section)")
        return f"{head}<p class='note'>no exit gallery: {why}; a new <code>leenet run</code> draws one</p></section>"
    model = f" ({esc(setting(results.selected))})" if results.selected else ""
    who = "the first seed's model" if results.seeds is not None else "the saved model"  # a multi-seed benchmark
    intro = (f"<p class='note'>test images {who}{model} let leave at each exit, up to "
             f"{max(len(e.indices) for e in section.exits)} drawn at random from those that left there (seed "
             f"{section.seed}); each captioned with the prediction over the true class, mistakes marked ✗ and "
             "framed in red</p>")
    if isinstance(note := results.extra.get("gallery_note"), str):  # how a benchmark drew it, written beside it
        intro += f"<p class='note'>{esc(note)}</p>"
    width = 125 * _heatmap_size(section)[0]  # CSS pixels: text as large as the other plots' (saved at 150 dpi)
    drawn = plot_class_exits(section, Path(run_dir) / "class_exits.png")
    heatmap = f"<div style='max-width:{width:.0f}px'>{img(drawn, 'share of each class per exit')}</div>"
    try:
        thumbs = read_gallery_file(Path(run_dir) / section.file)
        wanted = {i for e in section.exits for i in e.indices} | set(section.final_wrong)
        if not wanted <= set(thumbs.indices.tolist()):
            raise LeenetError(f"{section.file} holds other images than results.json names")
    except LeenetError as exc:
        missing = (f"<p class='note'><b>the thumbnails cannot be shown: {esc(brief(exc, None))}</b> (results.json "
                   "keeps which images; the images themselves live in that file)</p>")
        return f"{head}{missing}<h3>Which classes leave where</h3>{heatmap}</section>"
    names = [e.name for e in section.exits]
    rows = []
    for e in section.exits:
        share = f"{e.left / section.total:.1%}" if section.total else "–"
        rows.append(f"<div class='exit-row'><div class='row-label'><b>{esc(e.name)}</b><br>{e.left:,} of "
                    f"{section.total:,} left here ({share})</div>{_strip(thumbs, e.indices, names, False)}</div>")
    wrong = (f"<div class='exit-row'><div class='row-label'><b>final exit wrong</b><br>{section.final_wrong_count:,} "
             f"of {section.total:,} test images</div>{_strip(thumbs, section.final_wrong, names, True)}</div>")
    return (f"{head}{intro}{''.join(rows)}<h3>What even the final exit gets wrong</h3><p class='note'>the backbone's "
            "own mistakes, captioned with its prediction and where the saved model let the image leave</p>"
            f"{wrong}<h3>Which classes leave where</h3>{heatmap}</section>")


CSS = """
.exit-row{display:flex;gap:1em;align-items:flex-start;margin:.8em 0;padding-bottom:.6em;border-bottom:1px solid #f2f3f4}
.row-label{flex:0 0 9em;font-size:.85em;color:#566573} .row-label b{color:#1c2833;font-size:1.1em}
.strip{display:flex;flex-wrap:wrap;gap:.5em} .thumb{margin:0;text-align:center;font-size:.8em;line-height:1.25}
.thumb img{margin:0 auto;image-rendering:pixelated;border:3px solid #fff;outline:1px solid #d5d8dc}
.thumb.wrong img{border-color:#c0392b;outline-color:#c0392b} .thumb.wrong b{color:#c0392b} .thumb small{color:#566573}
"""
