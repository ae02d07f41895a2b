"""The self-contained HTML report: SVG charts, escaping, embedded images, atomic write."""

import base64
import io
import re

import pytest
import torch
from PIL import Image

from flowalign.training.report import curves_from_metrics, nice_ticks, svg_chart, write_report
from flowalign.training.run_report import split_unit_range
from flowalign.utils.io import save_png

POLYLINE = re.compile(r'<polyline data-name="([^"]*)"[^>]*points="([^"]*)"')


def _charts(text):
    return re.findall(r"<svg\b.*?</svg>", text, flags=re.S)


def test_curves_from_metrics_skips_missing_and_null():
    rows = [{"step": 0, "a": 1.0, "b": None}, {"step": 1, "a": 2.0}, {"step": 2, "b": 0.5}, {"a": 9.0}]
    assert curves_from_metrics(rows, ["a", "b", "c"]) == {"a": [(0.0, 1.0), (1.0, 2.0)], "b": [(2.0, 0.5)]}


def test_report_is_self_contained(tmp_path):
    rows = [{"step": i, "reward": i / 10, "acc": None if i == 2 else 0.3} for i in range(5)]
    png, jpg = tmp_path / "img" / "a.png", tmp_path / "img" / "b.jpg"
    save_png(torch.rand(3, 6, 6), png)
    Image.new("RGB", (5, 4), (255, 0, 0)).save(jpg, format="JPEG")
    path = write_report(
        tmp_path / "out" / "r.html", title="run <1>", summary={"prompt": "<b>x</b>", "acc": 0.123456789, "n": 3},
        curves={"train": curves_from_metrics(rows, ["reward", "acc"]), "loss": [(0, 1.0), (1, 0.5), (2, 0.25)]},
        tables={"samples & prompts": [{"prompt": "<b>x</b>", "score": 0.5}, {"prompt": "y", "extra": 1}]},
        images={"tensor": torch.rand(3, 8, 8), "batch": torch.rand(2, 3, 4, 4), "png": png, "jpg <file>": jpg},
        notes=["a & b"])
    assert path == tmp_path / "out" / "r.html"
    text = path.read_text()
    assert "<title>run &lt;1&gt;</title>" in text and "<h1>run &lt;1&gt;</h1>" in text
    assert "&lt;b&gt;x&lt;/b&gt;" in text and "<b>x</b>" not in text
    assert "samples &amp; prompts" in text and "a &amp; b" in text and "jpg &lt;file&gt;" in text
    assert "0.123457" in text and "<td>3</td>" in text
    assert text.index("Summary") < text.index("<svg")
    assert len(_charts(text)) == 2
    assert {name: len(points.split()) for name, points in POLYLINE.findall(text)} == {"reward": 5, "acc": 4,
                                                                                     "loss": 3}
    uris = re.findall(r'src="data:image/png;base64,([^"]+)"', text)
    assert len(uris) == 4
    sizes = [Image.open(io.BytesIO(base64.b64decode(u))).size for u in uris]
    assert sizes[0] == (8, 8) and sizes[2] == (6, 6) and sizes[3] == (5, 4)
    assert not re.search(r'(src|href)="(?!data:)', text)  # no external assets
    assert sorted(p.name for p in path.parent.iterdir()) == ["r.html"]  # atomic: no temporary files left


def test_chart_has_axes_ticks_labels_and_legend():
    svg = svg_chart("reward <mean>", {"train reward": [(0, 0.1), (10, 0.9)], "held-out accuracy": [(5, 0.5)]})
    assert svg.startswith("<svg") and svg.endswith("</svg>")
    assert "reward &lt;mean&gt;" in svg and ">step</text>" in svg
    assert ">train reward</text>" in svg and ">held-out accuracy</text>" in svg
    assert all(f">{t}</text>" in svg for t in ("0", "2", "10", "0.2", "0.8"))  # tick labels on both axes
    assert len(re.findall(r"<line ", svg)) >= 4
    assert [len(p.split()) for _, p in POLYLINE.findall(svg)] == [2, 1]
    assert svg.count("<circle") == 3
    few_steps = svg_chart("r", {"a": [(0, 0.0), (1, 1.0), (2, 0.5)]})
    assert ">1</text>" in few_steps and ">1.5</text>" not in few_steps  # integer steps: integer x ticks


def test_held_out_metrics_split_by_scale():
    rows = [{"eval/reward": 0.4, "eval/blobs": 2.5}, {"eval/reward": 0.6, "eval/blobs": 0.9, "eval/pos": None},
            {"eval/pos": 1.0}]
    assert split_unit_range(rows, ["eval/blobs", "eval/pos", "eval/reward"]) == (["eval/pos", "eval/reward"],
                                                                                 ["eval/blobs"])
    assert split_unit_range(rows[:1], ["eval/blobs"]) == (["eval/blobs"], [])  # never an empty main chart


def test_empty_series_and_empty_charts(tmp_path):
    assert "no data" in svg_chart("nothing", {})
    svg = svg_chart("half", {"a": [(0, 1.0), (1, 2.0)], "b": []})
    assert [name for name, _ in POLYLINE.findall(svg)] == ["a"] and "b (no data)" in svg
    svg = svg_chart("flat", {"a": [(3, 2.0)]})  # one point: a degenerate range must not divide by zero
    assert len(POLYLINE.findall(svg)) == 1 and "nan" not in svg
    text = write_report(tmp_path / "r.html", title="t", summary={}, curves={"e": {}, "l": []}).read_text()
    assert len(_charts(text)) == 2 and text.count("no data") == 2 and "(empty)" in text


@pytest.mark.parametrize(("lo", "hi", "expected"), [(0, 10, [0, 2, 4, 6, 8, 10]), (0.13, 0.87, [0.2, 0.4, 0.6, 0.8]),
                                                    (-1, 1, [-1, -0.5, 0, 0.5, 1]), (3, 3, [3])])
def test_nice_ticks(lo, hi, expected):
    assert nice_ticks(lo, hi) == pytest.approx(expected)
