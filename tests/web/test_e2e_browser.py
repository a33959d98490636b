"""End to end in a real headless Chromium (Debian's, driven by Playwright): a shopper searches with words,
narrows by a facet, searches with a photo and opens a product page; then the same pages at phone width.

The catalog is a slice of demo/grocery (real product photos) imported with the catalog importer, indexed with
the hashing models (no learned weights). Screenshots go to test-artifacts/ (git-ignored).

The browser starts inside each test, after the database is filled, and stops before the database is flushed:
Playwright's sync API runs an event loop in this thread, during which Django refuses synchronous ORM calls.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from django.conf import settings
from PIL import Image
from playwright.sync_api import Page, expect, sync_playwright

from catalog.importer import CatalogImporter
from catalog.models import Product
from tests.search.conftest import index_products

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")  # `make browser` installs it
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
DEMO = Path(settings.BASE_DIR) / "demo" / "grocery"
ARTIFACTS = Path(settings.BASE_DIR) / "test-artifacts"
# A slice of the demo catalog with prices added, so the price facet and prices show.
SKUS = {
    "grocery-golden-delicious": "0.45", "grocery-granny-smith": "0.49", "grocery-red-delicious": "0.55",
    "grocery-banana": "0.25", "grocery-lime": "0.35", "grocery-red-bell-pepper": "0.99",
    "grocery-yellow-bell-pepper": "0.99", "grocery-cucumber": "0.79", "grocery-carrots": "1.29",
    "grocery-vine-tomato": "2.49", "grocery-arla-standard-milk": "1.15", "grocery-oatly-oat-milk": "1.89",
}

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def grocery(tmp_path) -> dict[str, Product]:
    """Import the slice with its real images through the catalog importer, then index it."""
    rows = []
    for line in (DEMO / "products.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row["sku"] in SKUS:
            row.update(price=SKUS[row["sku"]], currency="EUR")
            rows.append(json.dumps(row))
    (tmp_path / "images").symlink_to(DEMO / "images")  # image paths stay inside the catalog's folder
    path = tmp_path / "products.jsonl"
    path.write_text("\n".join(rows) + "\n")
    report = CatalogImporter(path).run()
    assert report.created == len(SKUS) and not report.rejected
    products = {p.sku: p for p in Product.objects.prefetch_related("images")}
    index_products(products.values())
    return products


@pytest.fixture
def shopper_photo(tmp_path) -> Path:
    """A 'shopper photo' of the banana: cropped, tilted, resized and re-compressed catalogue image."""
    with Image.open(DEMO / "images" / "Banana_Iconic.jpg") as img:
        img = img.convert("RGB")
        w, h = img.size
        img = img.crop((int(w * 0.08), int(h * 0.1), int(w * 0.95), int(h * 0.92)))
        img = img.resize((480, int(480 * img.height / img.width))).rotate(4, fillcolor=(250, 250, 250))
    path = tmp_path / "my-banana.jpg"
    img.save(path, format="JPEG", quality=80)
    return path


def launch(playwright):
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)


def screenshot(page: Page, name: str) -> Path:
    """Full-page screenshot in test-artifacts/, after every image (lazy ones too) has loaded."""
    ARTIFACTS.mkdir(exist_ok=True)
    page.evaluate("document.querySelectorAll('img[loading=lazy]').forEach(i => i.loading = 'eager')")
    page.wait_for_function("Array.from(document.images).every(i => i.complete)")
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000
    return path


def check_accessible(page: Page) -> None:
    """Sanity checks a screen-reader user depends on: lang, one h1, a main landmark, alt texts, labels."""
    problems = page.evaluate("""() => {
        const out = [];
        if (!document.documentElement.lang) out.push('html has no lang');
        if (document.querySelectorAll('h1').length !== 1) out.push('not exactly one h1');
        if (!document.querySelector('main')) out.push('no main landmark');
        for (const img of document.querySelectorAll('img')) {
            if (!img.hasAttribute('alt') || !img.alt.trim()) out.push('img without alt: ' + img.src);
        }
        for (const el of document.querySelectorAll('input, select, textarea')) {
            if (el.type === 'hidden') continue;
            const named = el.labels.length > 0 || el.getAttribute('aria-label') || el.getAttribute('aria-labelledby');
            if (!named) out.push('unlabelled ' + el.tagName + ' ' + (el.name || el.id));
        }
        for (const a of document.querySelectorAll('a')) {
            if (!a.textContent.trim() && !a.querySelector('img[alt]')) out.push('link without text: ' + a.href);
        }
        return out;
    }""")
    assert problems == [], problems


def images_loaded(page: Page) -> bool:
    page.evaluate("document.querySelectorAll('img[loading=lazy]').forEach(i => i.loading = 'eager')")
    page.wait_for_function("Array.from(document.images).every(i => i.complete)")
    return page.evaluate("Array.from(document.images).every(i => i.naturalWidth > 0)")


def card_titles(page: Page) -> list[str]:
    return page.locator("main .results .card-title").all_inner_texts()


def test_shopper_searches_filters_uses_a_photo_and_opens_a_product(live_server, grocery, shopper_photo):
    base = live_server.url
    with sync_playwright() as p:
        browser = launch(p)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        served = page.request.get(f"{base}/static/web/site.css")
        assert served.status == 200 and "text/css" in served.headers["content-type"]

        # Home: the stylesheet is applied, categories to browse, the search box is labelled.
        page.goto(base + "/")
        expect(page.get_by_role("heading", level=1)).to_have_text("Find it by words or by photo")
        assert page.evaluate("getComputedStyle(document.querySelector('.brand span')).color") == "rgb(11, 92, 173)"
        expect(page.get_by_role("link", name=re.compile(r"^Fruit 5 products"))).to_be_visible()
        check_accessible(page)

        # Type a query and see results.
        page.get_by_label("Search products").fill("apple")
        page.keyboard.press("Enter")
        page.wait_for_url(re.compile(r"/search\?q=apple$"))
        expect(page.get_by_role("heading", level=1)).to_have_text("Results for “apple”")
        titles = card_titles(page)
        assert titles[:3] and all("Apple" in t or "Granny" in t for t in titles[:3]), titles
        expect(page.locator(".card-price").first).to_have_text(re.compile(r"^€\d+\.\d\d$"))
        assert images_loaded(page), "product images are served to the browser"
        check_accessible(page)

        # Apply a facet: only fruit.
        page.locator(".facets").get_by_role("link", name=re.compile(r"^Fruit \d+")).click()
        page.wait_for_url(re.compile(r"category=Fruit"))
        categories = page.locator("main .results .card-category").all_inner_texts()
        assert categories and all(c.startswith("Fruit") for c in categories), categories
        expect(page.get_by_role("link", name=re.compile(r"^Category: Fruit"))).to_be_visible()
        expect(page.locator(".facet-link[aria-current=true]")).to_have_count(1)
        check_accessible(page)
        screenshot(page, "e2e-results.png")

        # Search by photo: choosing the file starts the search (site.js); the banana comes first.
        page.get_by_label("Search by photo").set_input_files(str(shopper_photo))
        page.wait_for_url(re.compile(r"/search\?photo=[0-9a-f]{32}$"))
        expect(page.get_by_role("heading", level=1)).to_have_text("Products like your photo")
        expect(page.get_by_role("img", name="Your photo")).to_be_visible()
        assert card_titles(page)[0] == "Banana Ecological Class 1"
        assert images_loaded(page)
        check_accessible(page)
        screenshot(page, "e2e-photo-results.png")

        # Open the product page.
        page.locator("main .results .card a").first.click()
        page.wait_for_url(re.compile(r"/p/grocery-banana$"))
        expect(page.get_by_role("heading", level=1)).to_have_text("Banana Ecological Class 1")
        expect(page.get_by_role("img", name="Banana Ecological Class 1")).to_be_visible()
        expect(page.locator(".details .price")).to_have_text("€0.25")
        expect(page.get_by_role("link", name="Fruit", exact=True)).to_have_attribute("href", "/search?category=Fruit")
        # Category Fruit/Banana/Banana: the repeated level is shown once.
        expect(page.locator(".breadcrumbs li")).to_have_text(["Home", "Fruit", "Banana"])
        similar = page.locator(".similar .card-title").all_inner_texts()
        assert similar and "Banana Ecological Class 1" not in similar
        expect(page.get_by_text("Question answering is not enabled yet")).to_be_visible()
        expect(page.get_by_label("Ask a question about this product")).to_be_disabled()
        assert images_loaded(page)
        check_accessible(page)
        screenshot(page, "e2e-product.png")

        # Keyboard: the first Tab reaches the skip link, which moves focus to the main content.
        page.keyboard.press("Tab")
        assert page.evaluate("document.activeElement.textContent.trim()") == "Skip to main content"
        assert page.evaluate("getComputedStyle(document.activeElement).outlineStyle") != "none"
        page.keyboard.press("Enter")
        assert page.evaluate("document.activeElement.id") == "main"
        browser.close()


def test_phone_width_has_no_horizontal_scroll(live_server, grocery):
    base = live_server.url
    with sync_playwright() as p:
        browser = launch(p)
        page = browser.new_page(viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True,
                                has_touch=True)
        for path, name in (("/", "phone-home.png"), ("/search?q=pepper", "phone-results.png"),
                           ("/p/grocery-red-bell-pepper", "phone-product.png")):
            page.goto(base + path)
            assert images_loaded(page)
            width = page.evaluate("document.documentElement.scrollWidth")
            assert width <= 390, f"{path} is {width}px wide at a 390px viewport"
            check_accessible(page)
            screenshot(page, name)
        # On the results page the filters start folded away, and open on demand.
        page.goto(base + "/search?q=pepper")
        facets = page.locator("details[data-facets]")
        expect(facets).not_to_have_attribute("open", "")
        page.get_by_text("Filters", exact=True).click()
        expect(facets).to_have_attribute("open", "")
        expect(page.locator(".facets").get_by_role("link", name=re.compile(r"^Vegetables \d+"))).to_be_visible()
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
        browser.close()


def test_understood_words_show_as_removable_chips_and_a_merchant_synonym_works_at_once(live_server, grocery):
    """The page shows what the engine read in the words; removing a reading searches again without it; a
    synonym the merchant adds in the admin is read by the very next search (same server, no restart)."""
    from django.contrib.auth import get_user_model

    get_user_model().objects.create_superuser("merchant", "m@example.com", "pw-for-the-test")
    base = live_server.url
    with sync_playwright() as p:
        browser = launch(p)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(base + "/search?q=apples")
        chips = page.locator(".understood .chip-understood")
        expect(chips).to_have_count(1)
        expect(chips.first).to_contain_text("apples → Category: Fruit › Apple")
        check_accessible(page)
        screenshot(page, "e2e-understood.png")

        # Remove the reading: the same words, searched without it; the chip offers to read it again.
        page.get_by_role("link", name="Don't read “apples” as Category: Fruit › Apple").click()
        page.wait_for_url(re.compile(r"ignore=apples"))
        expect(page.locator(".understood .chip-off")).to_contain_text("apples: not read as Category: Fruit › Apple")
        page.get_by_role("link", name="read it again").click()
        page.wait_for_url(re.compile(r"/search\?q=apples$"))
        # Or make it a filter: then it is an ordinary, hard filter chip.
        page.get_by_role("link", name="only Category: Fruit › Apple").click()
        expect(page.get_by_role("link", name=re.compile(r"^Category: Fruit › Apple"))).to_be_visible()
        assert all(c.startswith("Fruit › Apple") for c in page.locator("main .results .card-category").all_inner_texts())

        # "plantain" means no banana to this catalog (the hashing test models may read it as something else) ...
        page.goto(base + "/search?q=plantain")
        expect(page.locator("main h1")).to_have_text("Results for “plantain”")
        assert "Banana" not in (page.locator(".understood").all_inner_texts() or [""])[0]
        # ... until the merchant says so in the admin.
        page.goto(base + "/admin/login/?next=/admin/catalog/searchsynonym/add/")
        page.get_by_label("Username").fill("merchant")
        page.get_by_label("Password").fill("pw-for-the-test")
        page.get_by_role("button", name="Log in").click()
        page.wait_for_url(re.compile(r"/admin/catalog/searchsynonym/add/$"))
        page.get_by_label("Phrase").fill("plantain")
        page.get_by_label("Field").fill("category")
        page.get_by_label("Value").fill("Fruit/Banana")
        page.get_by_role("button", name="Save", exact=True).click()
        expect(page.get_by_text("was added successfully")).to_be_visible()
        page.goto(base + "/search?q=plantain")
        expect(page.locator(".understood .chip-understood")).to_contain_text("plantain → Category: Fruit › Banana")
        assert card_titles(page)[0] == "Banana Ecological Class 1"
        browser.close()


def test_a_shopper_asks_a_question_in_the_product_page_box(live_server, grocery, settings):
    """The question box on /p/<sku>: typed questions come back under the box with the answer, how sure it is in
    words and the evidence; a question the photo cannot answer surely is "I don't know". The answerer is the
    colour-meter test backend (tests/qa/plugins.py: real routing by the MiniLM text embedder, mean-RGB image
    features); the trained TrunkAnswerer is served in tests/qa."""
    from mmsearch import plugins
    from qa.models import Question

    settings.MMSEARCH_MODELS = {
        **settings.MMSEARCH_MODELS,
        "qa_text": {"ROLE": "text_embedder", "BACKEND": "mmsearch.plugins.sentence.SentenceEmbedder", "OPTIONS": {}},
        "answerer": {"BACKEND": "tests.qa.plugins.ColourMeterAnswerer",
                     "OPTIONS": {"threshold": 0.9, "text_embedder": "qa_text"}},
    }
    plugins.reset()
    origin = grocery["grocery-banana"].attributes["origin_and_volume"]  # "Ecuador, ca 180g"
    base = live_server.url
    with sync_playwright() as p:
        browser = launch(p)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(base + "/p/grocery-banana")
        box = page.get_by_label("Ask a question about this product")
        expect(box).to_be_enabled()
        expect(page.get_by_text("Question answering is not enabled yet")).to_have_count(0)

        # A fact: the price, read from the product's fields, with that field as the evidence.
        box.fill("How much does it cost?")
        page.get_by_role("button", name="Ask").click()
        answer = page.locator("#answers .answer").first
        # (the first question loads the text embedder that routes questions: allow it time on a busy machine)
        expect(answer.locator(".answer-question")).to_have_text("“How much does it cost?”", timeout=90_000)
        expect(answer.locator(".answer-text strong")).to_have_text("0.25 EUR")
        expect(answer.locator(".answer-sureness")).to_have_text("(very sure, 1.00)")
        expect(answer.get_by_role("list", name="Evidence").locator("li")).to_have_text(["price 0.25 EUR"])
        expect(answer).not_to_have_class(re.compile(r"\babstained\b"))

        # Where it comes from: the origin attribute.
        box.fill("Where is it from?")
        page.get_by_role("button", name="Ask").click()
        expect(page.locator("#answers .answer")).to_have_count(2, timeout=30_000)
        answer = page.locator("#answers .answer").first
        expect(answer.locator(".answer-text strong")).to_have_text(origin)
        expect(answer.locator(".evidence-source")).to_have_text(["attribute"])

        # The banana's photo is none of the colours this answerer knows surely: "I don't know", shown as such,
        # with what the image suggested as the evidence.
        box.fill("What colour is it?")
        page.get_by_role("button", name="Ask").click()
        expect(page.locator("#answers .answer")).to_have_count(3, timeout=30_000)
        answer = page.locator("#answers .answer").first
        expect(answer).to_have_class(re.compile(r"\babstained\b"))
        expect(answer.locator(".answer-text")).to_contain_text("I don't know.")
        expect(answer.locator(".answer-sureness")).to_have_count(0)
        expect(answer.locator(".evidence-source")).to_have_text(["image"])
        check_accessible(page)
        screenshot(page, "e2e-question.png")
        browser.close()
    logged = list(Question.objects.order_by("id").values_list("question", "answer", "abstained", "kind"))
    assert logged == [("How much does it cost?", "0.25 EUR", False, "price"),
                      ("Where is it from?", origin, False, "origin"),
                      ("What colour is it?", "I don't know", True, "colour")]
