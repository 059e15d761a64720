"""The near-duplicate pairs as a picture: the first pairs side by side, so a reader sees at a glance
whether they are copies (the counts alone do not say). Pillow only, written atomically."""

from __future__ import annotations

import io
from pathlib import Path

from flows.engine.fsutil import atomic_write_bytes
from flows.engine.records.profile import NearDuplicates, NearPair

CELL_PX = 160
CAPTION_PX = 28
MAX_SHEET_PAIRS = 8


def tile(path: str, cell: int):
    """The image fitted into a ``cell`` square (grey when it cannot be read)."""
    from PIL import Image, ImageOps

    canvas = Image.new("RGB", (cell, cell), (235, 235, 235))
    try:
        with Image.open(path) as im:
            im.draft("RGB", (cell * 2, cell * 2))
            picture = ImageOps.exif_transpose(im).convert("RGB")
    except Exception:  # an unreadable image stays grey: the sheet is an illustration
        return canvas
    picture.thumbnail((cell, cell))
    canvas.paste(picture, ((cell - picture.width) // 2, (cell - picture.height) // 2))
    return canvas


def caption(pair: NearPair) -> tuple[str, str]:
    """Two caption lines: the files and the distance."""
    flip = ", flipped" if pair.flipped else ""
    return (
        f"{pair.first_split}/{Path(pair.first).name}  ~  {pair.second_split}/{Path(pair.second).name}",
        f"Hamming distance {pair.distance}{flip}",
    )


def draw_contact_sheet(
    near: NearDuplicates, out: Path, *, pairs: int = MAX_SHEET_PAIRS, cell: int = CELL_PX
) -> Path | None:
    """A PNG of the first ``pairs`` pairs (across splits first), one row each; None when there are none."""
    shown = near.pairs[:pairs]
    if not shown:
        return None
    from PIL import Image, ImageDraw, ImageFont

    gap = 8
    width, row = 2 * cell + 3 * gap, cell + CAPTION_PX + gap
    sheet = Image.new("RGB", (width, gap + row * len(shown)), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for k, pair in enumerate(shown):
        top = gap + k * row
        sheet.paste(tile(pair.first, cell), (gap, top))
        sheet.paste(tile(pair.second, cell), (2 * gap + cell, top))
        for line, text in enumerate(caption(pair)):
            draw.text((gap, top + cell + 2 + 12 * line), text, fill="black", font=font)
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG")
    return atomic_write_bytes(out, buffer.getvalue())
