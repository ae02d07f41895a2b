"""Held-out evaluation images a person can read: upscaled samples with their prompts, before and after training.

``save_eval_images`` writes ``eval_<tag>.png`` (at most ``MAX_SAMPLES`` samples, each nearest-neighbour upscaled
by an integer factor to at least ``MIN_TILE`` pixels high, its prompt wrapped under it) and ``eval_<tag>.json``
(prompts, seeds, the upscale factor and where each tile and caption lies in the PNG). ``write_before_after`` pairs
the samples of ``eval_before`` and ``eval_after`` by seed (the evaluation uses fixed seeds, so a seed names the same
prompt and starting noise in both) and writes ``eval_before_after.png`` (+ ``.json``): each pair side by side under
labelled columns, the caption under the pair. Tiles are cropped back out of the saved PNGs, so this works after a
resume, in another process. Videos (N, F, 3, H, W) show up to ``MAX_FRAMES`` evenly spaced frames in a row.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont

from flowalign.errors import FlowAlignError
from flowalign.utils.io import atomic_path, to_pil, write_text

MAX_SAMPLES = 16
MIN_TILE = 256  # pixels: every image is upscaled to at least this height
MAX_FRAMES = 4
PAD = 8  # pixels around the sheet, between the tiles of a cell and around captions
CELL_GAP = 24  # pixels between cells, so that pairs stand apart
FONT_SIZE = 14
BACKGROUND = (255, 255, 255)
INK = (0, 0, 0)
MUTED = (90, 90, 90)
FRAME = (190, 190, 190)  # a 1-pixel line around each tile: white images stay apart from the white sheet
COLUMNS = 4  # samples per row for still images
PAIR_COLUMNS = 2  # before/after pairs per row for still images
#: every file these functions write into a run folder
EVAL_IMAGE_FILES = ("eval_before.png", "eval_before.json", "eval_after.png", "eval_after.json",
                    "eval_before_after.png", "eval_before_after.json")

Box = tuple[int, int, int, int]  # x, y, width, height in pixels of the PNG


@dataclass(frozen=True)
class Cell:
    """One grid cell: tiles side by side (one sample, or its before and after) and the caption under them."""

    tiles: tuple[Image.Image, ...]
    caption: str
    note: str = ""  # a second, grey caption line (the seed)


@dataclass(frozen=True)
class CellLayout:
    tiles: tuple[Box, ...]
    caption: Box


def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=FONT_SIZE)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _text_width(font, text: str) -> int:
    box = font.getbbox(text)
    return box[2] - box[0]


def _line_height(font) -> int:
    box = font.getbbox("Ayg")
    return box[3] - box[1] + 4


def wrap(text: str, font, width: int) -> list[str]:
    """Greedy word wrap to ``width`` pixels; a word longer than a line is cut between characters."""
    lines: list[str] = []
    current = ""
    for word in text.split():
        candidate = f"{current} {word}".strip()
        if _text_width(font, candidate) <= width:
            current = candidate
            continue
        if current:
            lines.append(current)
        current = ""
        for char in word:
            if current and _text_width(font, current + char) > width:
                lines.append(current)
                current = ""
            current += char
    if current:
        lines.append(current)
    return lines or [""]


def upscale_factor(height: int) -> int:
    """Integer nearest-neighbour factor bringing ``height`` to at least ``MIN_TILE`` (1 if already there)."""
    return max(1, math.ceil(MIN_TILE / height))


def sample_tiles(pixels: torch.Tensor) -> list[Image.Image]:
    """(N, 3, H, W) or (N, F, 3, H, W) in [0, 1] → one upscaled PIL image per sample (video: frames in a row)."""
    if pixels.ndim == 4:
        pixels = pixels[:, None]
    if pixels.ndim != 5 or pixels.shape[2] != 3:
        raise FlowAlignError(f"eval images must be (N, 3, H, W) or (N, F, 3, H, W), got {tuple(pixels.shape)}")
    frames, shown = pixels.shape[1], min(pixels.shape[1], MAX_FRAMES)
    chosen = [round(i * (frames - 1) / (shown - 1)) for i in range(shown)] if shown > 1 else [0]
    height, width = pixels.shape[-2:]
    factor = upscale_factor(height)
    gap = PAD if len(chosen) > 1 else 0
    tiles = []
    for sample in pixels.detach().float().cpu():
        tile = Image.new("RGB", (len(chosen) * width * factor + gap * (len(chosen) - 1), height * factor), BACKGROUND)
        for k, f in enumerate(chosen):
            frame = to_pil(sample[f]).resize((width * factor, height * factor), Image.Resampling.NEAREST)
            tile.paste(frame, (k * (width * factor + gap), 0))
        tiles.append(tile)
    return tiles


def compose(cells: list[Cell], columns: int, labels: tuple[str, ...] = ()) -> tuple[Image.Image, list[CellLayout]]:
    """Cells on a white sheet, ``columns`` per row, each caption wrapped to its cell's width under it; with
    ``labels`` (one per tile of a cell) a header row names the tile columns. Returns the sheet and each cell's
    tile and caption boxes."""
    font = _font()
    tile_w = max(t.width for c in cells for t in c.tiles)
    tile_h = max(t.height for c in cells for t in c.tiles)
    per_cell = max(len(c.tiles) for c in cells)
    cell_w = per_cell * tile_w + (per_cell - 1) * PAD
    line = _line_height(font)
    wrapped = [wrap(c.caption, font, cell_w) + ([c.note] if c.note else []) for c in cells]
    rows = [list(range(start, min(start + columns, len(cells)))) for start in range(0, len(cells), columns)]
    caption_h = [max(len(wrapped[i]) for i in row) * line + PAD for row in rows]
    header_h = line + PAD if labels else 0
    ncols = min(columns, len(cells))
    width = 2 * PAD + ncols * cell_w + (ncols - 1) * CELL_GAP
    height = 2 * PAD + header_h + sum(tile_h + h for h in caption_h) + (len(rows) - 1) * CELL_GAP
    sheet = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    for col in range(ncols):
        for k, label in enumerate(labels):
            x = PAD + col * (cell_w + CELL_GAP) + k * (tile_w + PAD)
            draw.text((x + (tile_w - _text_width(font, label)) // 2, PAD), label, fill=INK, font=font)
    layouts: list[CellLayout] = []
    y = PAD + header_h
    for row, cap_h in zip(rows, caption_h):
        for col, i in enumerate(row):
            x = PAD + col * (cell_w + CELL_GAP)
            boxes = []
            for k, tile in enumerate(cells[i].tiles):
                tx = x + k * (tile_w + PAD)
                sheet.paste(tile, (tx, y))
                draw.rectangle((tx - 1, y - 1, tx + tile.width, y + tile.height), outline=FRAME)
                boxes.append((tx, y, tile.width, tile.height))
            for n, text in enumerate(wrapped[i]):
                fill = MUTED if cells[i].note and n == len(wrapped[i]) - 1 else INK
                draw.text((x, y + tile_h + PAD // 2 + n * line), text, fill=fill, font=font)
            layouts.append(CellLayout(tuple(boxes), (x, y + tile_h, cell_w, cap_h)))
        y += tile_h + cap_h + CELL_GAP
    return sheet, layouts


def _save(sheet: Image.Image, meta: dict, png: Path) -> Path:
    with atomic_path(png) as tmp:
        sheet.save(tmp, format="PNG")
    write_text(png.with_suffix(".json"), json.dumps(meta, indent=2) + "\n")
    return png


def save_eval_images(out_dir: str | Path, tag: str, pixels: torch.Tensor, prompts: list[str],
                     seeds: list[int]) -> Path:
    """Write ``eval_<tag>.png`` and ``eval_<tag>.json`` for the first ``MAX_SAMPLES`` samples; returns the PNG.

    ``pixels``: (N, 3, H, W) or (N, F, 3, H, W) in [0, 1]; ``prompts`` and ``seeds``: one per sample."""
    if not len(pixels) == len(prompts) == len(seeds):
        raise FlowAlignError(f"save_eval_images: {len(pixels)} samples, {len(prompts)} prompts, {len(seeds)} seeds; "
                             "expected one prompt and one seed per sample")
    if len(pixels) == 0:
        raise FlowAlignError("save_eval_images: no samples")
    n = min(len(pixels), MAX_SAMPLES)
    tiles = sample_tiles(pixels[:n])
    frames = min(pixels.shape[1], MAX_FRAMES) if pixels.ndim == 5 else 1
    cells = [Cell((tile,), prompt, f"seed {seed}") for tile, prompt, seed in zip(tiles, prompts, seeds)]
    sheet, layouts = compose(cells, 1 if frames > 1 else COLUMNS)
    meta = {"tag": tag, "prompts": list(prompts[:n]), "seeds": [int(s) for s in seeds[:n]], "frames": frames,
            "upscale": upscale_factor(pixels.shape[-2]), "tiles": [list(l.tiles[0]) for l in layouts],
            "captions": [list(l.caption) for l in layouts]}
    return _save(sheet, meta, Path(out_dir) / f"eval_{tag}.png")


def _read_eval(out_dir: Path, tag: str) -> tuple[dict, Image.Image]:
    meta_path, png_path = out_dir / f"eval_{tag}.json", out_dir / f"eval_{tag}.png"
    try:
        meta = json.loads(meta_path.read_text())
        sheet = Image.open(png_path).convert("RGB")
    except (OSError, json.JSONDecodeError) as err:
        raise FlowAlignError(f"cannot read the {tag!r} evaluation images ({meta_path}, {png_path}): {err}") from err
    if not all(isinstance(meta.get(k), list) for k in ("prompts", "seeds", "tiles")) or \
            not len(meta["prompts"]) == len(meta["seeds"]) == len(meta["tiles"]):
        raise FlowAlignError(f"{meta_path}: expected lists 'prompts', 'seeds' and 'tiles' of one length")
    return meta, sheet


def _crop(sheet: Image.Image, box: list[int]) -> Image.Image:
    x, y, w, h = box
    return sheet.crop((x, y, x + w, y + h))


def write_before_after(out_dir: str | Path) -> Path | None:
    """``eval_before_after.png`` (+ ``.json``) from ``eval_before.*`` and ``eval_after.*``: the samples of both
    with the same seed, side by side; None when either evaluation was not saved. The same seed with another prompt
    is an error (the two evaluations were not the same)."""
    out_dir = Path(out_dir)
    if not all((out_dir / f"eval_{t}.{s}").is_file() for t in ("before", "after") for s in ("png", "json")):
        return None
    (before, before_png), (after, after_png) = _read_eval(out_dir, "before"), _read_eval(out_dir, "after")
    after_by_seed = {seed: i for i, seed in enumerate(after["seeds"])}
    cells, pairs = [], []
    for i, seed in enumerate(before["seeds"]):
        j = after_by_seed.get(seed)
        if j is None:
            continue
        if before["prompts"][i] != after["prompts"][j]:
            raise FlowAlignError(f"{out_dir}: seed {seed} has prompt {before['prompts'][i]!r} before training and "
                                 f"{after['prompts'][j]!r} after; the evaluations must use the same prompts and seeds")
        tiles = (_crop(before_png, before["tiles"][i]), _crop(after_png, after["tiles"][j]))
        cells.append(Cell(tiles, before["prompts"][i], f"seed {seed}"))
        pairs.append({"seed": seed, "prompt": before["prompts"][i]})
    if not cells:
        raise FlowAlignError(f"{out_dir}: eval_before and eval_after share no seed (before {before['seeds']}, "
                             f"after {after['seeds']})")
    video = max(before.get("frames", 1), after.get("frames", 1)) > 1
    sheet, layouts = compose(cells, 1 if video else PAIR_COLUMNS, labels=("before", "after"))
    for pair, layout in zip(pairs, layouts):
        pair.update(before=list(layout.tiles[0]), after=list(layout.tiles[1]), caption=list(layout.caption))
    return _save(sheet, {"pairs": pairs}, out_dir / "eval_before_after.png")
