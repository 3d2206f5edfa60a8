"""Thumbnails decode in the background and render as data URIs; unreadable files render as missing."""

from __future__ import annotations

import base64
import io
import threading
import time

import jinja2
from PIL import Image

from helpers import colour_image
from tlearn.report import thumbnails
from tlearn.report.thumbnails import THUMBNAIL_PIXELS, thumbnail

TEMPLATE = jinja2.Environment(autoescape=True).from_string('{% if t %}<img src="{{ t }}">{% else %}missing{% endif %}')


def test_a_thumbnail_renders_as_a_small_jpeg_data_uri(tmp_path):
    path = tmp_path / "big.png"
    colour_image((200, 30, 30), size=640).save(path)
    picture = thumbnail(path)
    html = TEMPLATE.render(t=picture)
    assert html.startswith('<img src="data:image/jpeg;base64,') and html == f'<img src="{picture.uri}">'
    decoded = Image.open(io.BytesIO(base64.b64decode(picture.uri.split(",", 1)[1])))
    assert max(decoded.size) == THUMBNAIL_PIXELS


def test_an_unreadable_file_renders_as_missing(tmp_path):
    (tmp_path / "broken.jpg").write_bytes(b"<html>not a picture</html>")
    assert TEMPLATE.render(t=thumbnail(tmp_path / "broken.jpg")) == "missing"
    assert TEMPLATE.render(t=thumbnail(tmp_path / "gone.jpg")) == "missing"


def test_thumbnails_decode_concurrently_while_the_page_is_assembled(tmp_path, monkeypatch):
    """Asking for a thumbnail never waits for its decode, and several decode at the same time."""
    release, running, peak, lock = threading.Event(), [0], [0], threading.Lock()

    def blocked(path, pixels):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        release.wait(10)
        with lock:
            running[0] -= 1
        return f"data:{path.name}"

    monkeypatch.setattr(thumbnails, "thumbnail_uri", blocked)
    monkeypatch.setattr(thumbnails, "_pool", None)
    monkeypatch.setattr(thumbnails.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    pending = [thumbnail(tmp_path / f"{n}.jpg") for n in range(4)]  # returns while every decode is blocked
    deadline = time.monotonic() + 5
    while peak[0] < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    release.set()
    assert peak[0] == 2  # two decodes were running at once (the pool's size on two cores)
    assert [str(picture) for picture in pending] == [f"data:{n}.jpg" for n in range(4)]
