"""Shopper pages through Django's test client: search, facets, pages, photo search, product page, errors."""

from __future__ import annotations

import html
import io
import re
from pathlib import Path

import pytest
from django.core.files.storage import default_storage, storages
from PIL import Image

from mmsearch.models import ActiveModel
from mmsearch.web import photos
from tests.conftest import make_image

pytestmark = pytest.mark.django_db


def links(body: str) -> dict[str, str]:
    """Visible link text -> href (facet links and chips included; tags inside the link removed)."""
    out = {}
    for attrs, inner in re.findall(r'<a\b([^>]*)>(.*?)</a>', body, flags=re.S):
        href = re.search(r'href="([^"]*)"', attrs).group(1)
        text = " ".join(re.sub(r"<[^>]+>", " ", inner).split())
        out[html.unescape(text)] = html.unescape(href)
    return out


def card_titles(body: str) -> list[str]:
    return [html.unescape(t) for t in re.findall(r'<span class="card-title">(.*?)</span>', body)]


def follow(client, href: str, base: str = "/search"):
    return client.get(href if href.startswith("/") else base + href)


def test_home_lists_categories_and_has_both_search_forms(client, shop):
    response = client.get("/")
    body = response.content.decode()
    assert response.status_code == 200
    assert '<label for="site-q" class="visually-hidden">Search products</label>' in body
    assert 'for="site-photo"' in body and 'type="file"' in body
    assert "7 products in the catalog" in body  # the inactive product is not counted
    found = links(body)
    assert found["Apparel 5 products"] == "/search?category=Apparel"
    assert found["Footwear 1 product"] == "/search?category=Footwear"
    assert 'class="skip-link" href="#main"' in body and '<main id="main"' in body


def test_text_search_shows_grid_with_images_prices_and_facets(client, shop):
    response = client.get("/search", {"q": "red"})
    body = response.content.decode()
    assert response.status_code == 200
    titles = card_titles(body)
    assert set(titles[:2]) == {"Red Cotton Kurta", "Red Graphic Tshirt"}
    assert "Red Cotton Kurta (discontinued)" not in titles
    assert '<img src="/media/images/' in body and 'alt="Red Cotton Kurta"' in body
    assert "€20.00" in body and "€15.00" in body
    assert 'href="/p/kurta-red"' in body
    # Facets: the category level with one choice is skipped, attribute values and price buckets are links.
    found = links(body)
    assert any(text.startswith("Women ") for text in found)
    assert any(text.startswith("€") and "–" in text for text in found)


def test_category_facet_link_narrows_results_and_chip_removes_it(client, shop):
    body = client.get("/search", {"q": "red"}).content.decode()
    topwear = next(href for text, href in links(body).items() if text.startswith("Apparel "))
    assert "category=Apparel" in topwear
    narrowed = follow(client, topwear).content.decode()
    assert all(t in {"Red Cotton Kurta", "Red Graphic Tshirt", "Blue Denim Jeans", "Yellow Summer Dress",
                     "White Cotton Shirt"} for t in card_titles(narrowed))
    assert "Black Leather Handbag" not in card_titles(narrowed)
    chips = {t: h for t, h in links(narrowed).items() if t.startswith("Category: Apparel")}
    assert chips, "the active filter is shown with a remove link"
    back = follow(client, next(iter(chips.values()))).content.decode()
    assert "Black Leather Handbag" in card_titles(back)


def test_attribute_and_tag_filters(client, shop):
    women = client.get("/search", {"q": "red", "attr.gender": "Women"}).content.decode()
    assert card_titles(women)[0] == "Red Cotton Kurta"
    assert "Red Graphic Tshirt" not in card_titles(women)
    assert 'aria-current="true"' in women  # the chosen facet value is marked for screen readers
    festive = client.get("/search", {"q": "cotton", "tag": "occasion:festive"}).content.decode()
    assert card_titles(festive) == ["Red Cotton Kurta"]
    assert "Occasion: festive" in links(festive).keys() or any(t.startswith("Occasion: festive") for t in links(festive))


def test_price_bucket_link_filters_by_price(client, shop):
    body = client.get("/search", {"q": "cotton shirt kurta jeans"}).content.decode()
    buckets = {t: h for t, h in links(body).items() if t.startswith("€") and "–" in t}
    assert buckets
    label, href = min(buckets.items(), key=lambda kv: float(kv[0].split("–")[0].strip(" €").replace(",", "")))
    low = float(label.split("–")[0].strip(" €"))
    high = float(label.split("–")[1].split()[0].strip(" €"))
    narrowed = follow(client, href).content.decode()
    prices = [float(p) for p in re.findall(r'class="card-price">€([\d.]+)<', narrowed)]
    assert prices and all(low <= p < high for p in prices)


def test_browse_a_category_without_a_query(client, shop):
    response = client.get("/search", {"category": "Apparel/Topwear"})
    body = response.content.decode()
    assert response.status_code == 200
    assert "<h1>Topwear</h1>" in body
    assert card_titles(body) == ["Red Cotton Kurta", "Red Graphic Tshirt", "White Cotton Shirt"]  # title order
    # An empty search box with a filter set browses instead of failing.
    assert card_titles(client.get("/search", {"q": " ", "category": "Apparel/Topwear"}).content.decode())[0] == "Red Cotton Kurta"


def test_nothing_to_search_goes_home(client, shop):
    assert client.get("/search").url == "/"
    assert client.get("/search", {"q": "  "}).url == "/"


def test_pagination_links(client, shop):
    first = client.get("/search", {"category": "Apparel", "limit": "2"}).content.decode()
    assert "page 1 of 3" in first
    nav = re.search(r'<nav class="pagination" aria-label="Pages of results">(.*?)</nav>', first, re.S).group(1)
    assert 'aria-current="page"' in nav
    found = links(nav)
    second = follow(client, found["Next page"]).content.decode()
    assert "page 2 of 3" in second
    assert set(card_titles(first)).isdisjoint(card_titles(second))
    assert "Previous page" in links(second)


@pytest.mark.parametrize("params, message", [
    ({"q": "red", "colour": "red"}, "unknown parameter(s): colour"),
    ({"q": "x" * 201}, "the query is 201 characters long; the limit is 200."),
    ({"q": "red", "page": "two"}, "page must be a whole number"),
    ({"q": "red", "category": "Nope"}, "unknown category"),
    ({"q": "red", "price_min": "cheap"}, "price_min must be a number"),
    ({"q": "red", "limit": "1000"}, "limit must be between 1 and 100"),
])
def test_bad_input_is_a_400_with_a_message(client, shop, params, message):
    response = client.get("/search", params)
    body = html.unescape(response.content.decode())
    assert response.status_code == 400
    assert 'role="alert"' in body
    assert message in body


def test_photo_search_redirects_to_results_that_keep_filters(client, shop):
    upload = io.BytesIO(make_image(size=(64, 48), color=(225, 28, 28)))
    upload.name = "shopper.jpg"
    response = client.post("/search/photo", {"photo": upload})
    assert response.status_code == 302
    location = response["Location"]
    key = re.fullmatch(r"/search\?photo=([0-9a-f]{32})", location).group(1)
    page = client.get(location).content.decode()
    assert "Products like your photo" in page
    assert set(card_titles(page)[:2]) == {"Red Cotton Kurta", "Red Graphic Tshirt"}
    thumb = client.get(f"/search/photo/{key}.jpg")
    assert thumb.status_code == 200 and thumb["Content-Type"] == "image/jpeg"
    # Facet links carry the photo, so filtering a photo search needs no second upload.
    men = next(h for t, h in links(page).items() if t.startswith("Men "))
    assert f"photo={key}" in men
    narrowed = follow(client, men).content.decode()
    assert card_titles(narrowed)[0] == "Red Graphic Tshirt"
    assert "Red Cotton Kurta" not in card_titles(narrowed)


def test_stored_photo_is_shrunk_and_has_no_exif(client, shop):
    img = Image.new("RGB", (2000, 1000), (30, 60, 220))
    exif = Image.Exif()
    exif[0x010F] = "PhoneMaker"  # camera make: metadata a shopper did not mean to share
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif.tobytes())
    key = photos.save(buf.getvalue())
    stored = Image.open(io.BytesIO(photos.open_bytes(key)))
    assert max(stored.size) == photos.MAX_SIDE
    assert not stored.getexif()


@pytest.mark.parametrize("data, message", [
    (b"not an image at all", "That photo cannot be used: not an image file; use JPEG, PNG or WebP."),
    (make_image(fmt="GIF"), "That photo cannot be used: format GIF is not accepted; use JPEG, PNG or WebP."),
])
def test_bad_photo_upload_is_a_400_with_a_message(client, shop, data, message):
    upload = io.BytesIO(data)
    upload.name = "x.jpg"
    response = client.post("/search/photo", {"photo": upload})
    assert response.status_code == 400
    assert message in html.unescape(response.content.decode())


def test_missing_photo_and_expired_photo(client, shop):
    response = client.post("/search/photo", {})
    assert response.status_code == 400
    assert "Choose a photo to search with" in response.content.decode()
    gone = client.get("/search", {"photo": "0" * 32})
    assert gone.status_code == 400
    assert "That photo search has expired; upload the photo again." in gone.content.decode()
    assert client.get("/search", {"photo": "../../etc/passwd"}).status_code == 400
    assert client.get("/search/photo/" + "0" * 32 + ".jpg").status_code == 404


def test_photo_and_words_together_are_refused(client, shop):
    key = photos.save(make_image(size=(40, 40)))
    response = client.get("/search", {"photo": key, "q": "red"})
    assert response.status_code == 400
    assert "Search with words or with a photo, not both at once." in response.content.decode()


def test_query_photos_are_private(client, settings, shop):
    key = photos.save(make_image(size=(40, 40)))
    assert storages["query_photos"].exists(f"query-photos/{key}.jpg")
    assert not default_storage.exists(f"query-photos/{key}.jpg")  # not under MEDIA_ROOT
    assert not list(Path(settings.MEDIA_ROOT).rglob(f"{key}*"))
    assert client.get(f"/media/query-photos/{key}.jpg").status_code == 404  # the test settings serve MEDIA_ROOT


def test_old_photos_are_pruned(settings, shop):
    key = photos.save(make_image(size=(40, 40)))
    assert storages["query_photos"].exists(f"query-photos/{key}.jpg")
    settings.MMSEARCH_QUERY_PHOTO_TTL = 60
    import time

    assert photos.prune(now=time.time() + 30) == 0
    assert photos.prune(now=time.time() + 120) == 1
    assert not storages["query_photos"].exists(f"query-photos/{key}.jpg")


def test_photo_search_without_an_active_image_model_is_a_503(client, shop):
    ActiveModel.objects.filter(alias="embedder").delete()
    upload = io.BytesIO(make_image(size=(40, 40)))
    upload.name = "a.jpg"
    page = client.get(client.post("/search/photo", {"photo": upload})["Location"])
    assert page.status_code == 503
    assert "search by photo is not available" in page.content.decode()


def test_product_page(client, shop):
    response = client.get("/p/shoes-green")
    body = html.unescape(response.content.decode())
    assert response.status_code == 200
    assert '<h1 id="product-title">Green Running Shoes</h1>' in body
    assert "€80.00" in body
    assert body.count('alt="Green Running Shoes') == 2  # both images, each with alt text
    assert "<dt>Gender</dt><dd>Men</dd>" in body and "<dt>Colour</dt><dd>Green</dd>" in body
    crumbs = re.search(r'<nav class="breadcrumbs" aria-label="Breadcrumb">(.*?)</nav>', body, re.S).group(1)
    assert links(crumbs)["Footwear"] == "/search?category=Footwear"
    similar = re.search(r'<section class="similar".*?</section>', body, re.S).group(0)
    assert card_titles(similar) and "Green Running Shoes" not in card_titles(similar)
    questions = re.search(r'<section class="questions".*?</section>', body, re.S).group(0)
    assert "Question answering is not enabled yet" in questions
    assert '<label for="question">' in questions and "disabled" in questions


def test_product_page_tags_and_404s(client, shop):
    body = html.unescape(client.get("/p/kurta-red").content.decode())
    assert links(body)["Occasion: Festive"] == "/search?tag=occasion:festive"
    assert client.get("/p/kurta-old").status_code == 404  # inactive
    assert client.get("/p/no-such-sku").status_code == 404


def test_static_files_are_found():
    from django.contrib.staticfiles import finders

    assert finders.find("web/site.css") and finders.find("web/site.js")
