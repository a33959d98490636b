"""Photo queries as the mean of several views: the views themselves, their settings check, and search by photo
through the API honouring PHOTO_QUERY_SCALES / PHOTO_QUERY_MIRROR."""

from __future__ import annotations

import io

import numpy as np
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from PIL import Image

from mmsearch.search.config import check_settings
from mmsearch.search.photo import PhotoViews, embed_views, query_vectors, views_problem
from tests.training.plugins import ColourEmbedder


def framed(size: int, inner: int, inside, outside) -> Image.Image:
    """A square photo: a centred square of colour `inside`, `inner` pixels wide, on a background `outside`."""
    image = Image.new("RGB", (size, size), outside)
    start = (size - inner) // 2
    image.paste(Image.new("RGB", (inner, inner), inside), (start, start))
    return image


def test_views_are_centre_crops_and_their_mirrors():
    image = Image.new("RGB", (100, 60))
    image.putpixel((0, 30), (255, 0, 0))  # left edge, to see the mirror
    views = PhotoViews((1.0, 0.5), mirror=True)
    got = views.of(image)
    assert views.count == len(got) == 4
    assert [v.size for v in got] == [(100, 60), (100, 60), (50, 30), (50, 30)]
    assert got[0].getpixel((0, 30)) == (255, 0, 0) and got[1].getpixel((99, 30)) == (255, 0, 0)
    assert got[2].getpixel((0, 0)) == (0, 0, 0)  # the crop starts at (25, 15): the red pixel is outside
    assert [v.size for v in PhotoViews((0.7,), mirror=False).of(image)] == [(70, 42)]
    assert PhotoViews().as_dict() == {"scales": [1.0, 0.7, 0.5], "mirror": True, "count": 6}
    assert (views.whole_index, PhotoViews((0.5, 1.0), mirror=True).whole_index, PhotoViews((0.5,)).whole_index) == (0, 2, None)


def test_a_large_photo_is_shrunk_before_its_views_are_cut():
    big = Image.new("RGB", (4000, 3000), (10, 200, 30))
    sizes = [v.size for v in PhotoViews().of(big)]
    assert sizes == [(1024, 768)] * 2 + [(717, 538)] * 2 + [(512, 384)] * 2
    assert big.size == (4000, 3000)  # the caller's image is left alone
    assert PhotoViews().of(Image.new("RGB", (348, 348)))[0].size == (348, 348)


@pytest.mark.parametrize("scales, mirror, message", [
    ((), True, "non-empty list"),
    (0.5, True, "non-empty list"),
    ("1.0", True, "non-empty list"),
    ((1.0, 0), True, "not 0"),
    ((1.5,), True, "not 1.5"),
    ((1.0, "half"), True, "not 'half'"),
    ((1.0,), "yes", "PHOTO_QUERY_MIRROR must be True or False"),
])
def test_bad_views_are_refused_with_a_message(scales, mirror, message):
    assert message in views_problem(scales, mirror)
    with pytest.raises(ValueError, match="PHOTO_QUERY"):
        PhotoViews(scales, mirror)
    with pytest.raises(ValueError, match="PHOTO_QUERY"):
        PhotoViews.from_config({"PHOTO_QUERY_SCALES": scales, "PHOTO_QUERY_MIRROR": mirror})


def test_query_vector_is_the_mean_of_the_views():
    # ColourEmbedder: an image is its unit mean RGB. A red square (60 % of the side) on blue: the whole photo
    # is mostly blue, the half-size centre crop all red.
    image = framed(100, 60, (255, 0, 0), (0, 0, 255))
    per_view = embed_views(ColourEmbedder(), [image, image], PhotoViews((1.0, 0.5), mirror=False))
    assert per_view.shape == (2, 2, 3)
    whole = np.array([0.36, 0, 0.64]) / np.linalg.norm([0.36, 0, 0.64])
    assert np.allclose(per_view[0, 0], whole, atol=1e-3) and np.allclose(per_view[1, 0], [1, 0, 0], atol=1e-6)
    query = query_vectors(per_view)[0]
    expected = (whole + np.array([1, 0, 0])) / np.linalg.norm(whole + np.array([1, 0, 0]))
    assert np.allclose(query, expected, atol=1e-3) and query[0] > query[2]  # red now outweighs blue
    assert embed_views(ColourEmbedder(), [], PhotoViews()).shape == (6, 0, 3)


def test_settings_check_reports_bad_views(settings):
    assert check_settings() == []
    settings.MMSEARCH_SEARCH = {"PHOTO_QUERY_SCALES": [1.0, 2.0]}
    errors = check_settings()
    assert [e.id for e in errors] == ["mmsearch.E008"] and "not 2.0" in errors[0].msg


@pytest.mark.django_db
def test_photo_search_embeds_the_configured_views(shop, api_client, settings):
    # A yellow dress filling the middle 60 % of the photo's side, on a large blue background: the whole photo
    # alone looks like the blue jeans; with the centre crops the dress comes first.
    buffer = io.BytesIO()
    framed(100, 60, (230, 220, 40), (30, 60, 220)).save(buffer, format="PNG")

    def first_hit() -> str:
        upload = SimpleUploadedFile("photo.png", buffer.getvalue(), "image/png")
        response = api_client.post("/api/v1/search/image?limit=3", {"image": upload}, format="multipart")
        assert response.status_code == 200, response.content
        return response.json()["results"][0]["sku"]

    assert first_hit() == "dress-yellow"
    settings.MMSEARCH_SEARCH = {**settings.MMSEARCH_SEARCH, "PHOTO_QUERY_SCALES": (1.0,), "PHOTO_QUERY_MIRROR": False}
    assert first_hit() == "jeans-blue"
