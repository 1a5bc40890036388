"""leenet.report.gallery: a reproducible draw, a small thumbnails file, and a gallery section that says
why when a run has none."""

from __future__ import annotations

import dataclasses
import json
import re

import numpy as np
import pytest
from report_fixtures import EXIT_NAMES, digits_outputs, make_gallery_run, make_results

from leenet.errors import LeenetError
from leenet.report import (
    Results,
    gallery_from_outputs,
    read_gallery_file,
    read_results,
    write_gallery_file,
    write_report,
    write_results,
)
from leenet.report.gallery import GALLERY_FILE, PER_EXIT


def test_the_draw_is_reproducible_and_keeps_to_each_exit():
    outputs = digits_outputs()
    section, thumbs = gallery_from_outputs(**outputs, seed=3)
    again, _ = gallery_from_outputs(**outputs, seed=3)
    other, _ = gallery_from_outputs(**outputs, seed=4)
    assert section == again and section != other
    assert [e.name for e in section.exits] == EXIT_NAMES and section.total == 360
    for e, exit_ in enumerate(section.exits):
        assert exit_.left == int((outputs["exit_index"] == e).sum())
        assert len(exit_.indices) == min(PER_EXIT, exit_.left) and list(exit_.indices) == sorted(exit_.indices)
        assert all(outputs["exit_index"][i] == e for i in exit_.indices)
    wrong = np.flatnonzero(outputs["final_predictions"] != outputs["labels"])
    assert section.final_wrong_count == len(wrong) and set(section.final_wrong) <= set(wrong.tolist())


def test_class_shares_are_a_loop_reference():
    outputs = digits_outputs()
    section, _ = gallery_from_outputs(**outputs)
    share = np.array(section.class_exit_share)
    assert share.shape == (10, len(EXIT_NAMES)) and np.allclose(share.sum(1), 1, atol=1e-3)
    for c in range(10):
        mine = outputs["exit_index"][outputs["labels"] == c]
        for e in range(len(EXIT_NAMES)):
            assert share[c, e] == pytest.approx((mine == e).mean(), abs=1e-4)


def test_thumbnails_are_the_shown_images_in_their_own_colours():
    outputs = digits_outputs()
    section, thumbs = gallery_from_outputs(**outputs)
    shown = {i for e in section.exits for i in e.indices} | set(section.final_wrong)
    assert thumbs.indices.tolist() == sorted(shown)
    assert thumbs.images.dtype == np.uint8 and thumbs.images.shape == (len(shown), 8, 8, 1)  # grey stays grey
    first = thumbs.indices[0]
    expected = np.round(outputs["images"][first, 0].astype(np.float32) * 255 / 16)  # 0..16 stretched to 0..255
    assert np.array_equal(thumbs.images[0, :, :, 0], expected.astype(np.uint8))
    assert np.array_equal(thumbs.labels, outputs["labels"][thumbs.indices])
    assert np.array_equal(thumbs.predictions, outputs["predictions"][thumbs.indices])


def test_large_rgb_images_are_shrunk_and_normalized_ones_refused():
    n = 30
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 3, 224, 224), dtype=np.uint8)
    args = dict(labels=np.zeros(n), predictions=np.zeros(n), exit_index=np.arange(n) % 2,
                final_predictions=np.zeros(n), exit_names=["a", "b"], class_names=["x"])
    _, thumbs = gallery_from_outputs(images, **args)
    assert thumbs.images.shape[1:] == (74, 74, 3)  # 224 / 3, whole 3x3 blocks averaged
    with pytest.raises(ValueError, match="uint8 as stored, not normalized"):
        gallery_from_outputs(images.astype(np.float32) / 255, **args)


def test_gallery_file_round_trips_and_refuses_damage(tmp_path):
    _, thumbs = gallery_from_outputs(**digits_outputs())
    path = write_gallery_file(tmp_path, thumbs)
    assert path.name == GALLERY_FILE and path.stat().st_size < 20_000
    again = read_gallery_file(path)
    for field in dataclasses.fields(thumbs):
        assert np.array_equal(np.asarray(getattr(again, field.name)), np.asarray(getattr(thumbs, field.name)))
    path.write_bytes(b"not a zip")
    with pytest.raises(LeenetError, match="cannot read the gallery file") as info:
        read_gallery_file(path)
    assert "\n" not in str(info.value)


def test_results_keep_the_section_and_the_report_redraws_it_from_the_file(tmp_path):
    raw = make_gallery_run(tmp_path)
    results = Results.from_dict(raw)
    write_results(tmp_path / "results.json", results)
    assert read_results(tmp_path / "results.json").gallery == results.gallery
    assert len(json.dumps(raw["gallery"])) < 3_000  # indices and shares only: the images live in gallery.npz
    page = write_report(read_results(tmp_path / "results.json"), tmp_path).read_text()
    section = re.search(r"<section id='gallery'>.*?</section>", page, flags=re.S).group(0)
    shown = sum(len(e.indices) for e in results.gallery.exits) + len(results.gallery.final_wrong)
    assert section.count("<figure class='thumb") == shown and section.count("data:image/png;base64,") == shown + 1
    assert section.count("class='thumb wrong'") >= len(results.gallery.final_wrong)  # the final exit's mistakes
    assert "true 7" in section and "left at block" in section and "(α=0.3)" in section


def test_report_says_why_when_there_is_no_gallery(tmp_path):
    page = write_report(make_results(), tmp_path / "old").read_text()
    assert "no exit gallery: this run predates it (its results.json has no gallery section)" in page
    benchmark = {**make_results(), "seeds": [0, 1, 2]}
    page = write_report(benchmark, tmp_path / "bench").read_text()
    assert "a multi-seed benchmark keeps no per-sample outputs of its models" in page
    raw = make_gallery_run(tmp_path / "lost")
    (tmp_path / "lost" / GALLERY_FILE).unlink()
    page = write_report(raw, tmp_path / "lost").read_text()
    assert "the thumbnails cannot be shown: cannot read the gallery file" in page
    assert "Which classes leave where" in page and "<figure" not in page  # the heatmap needs no thumbnails
