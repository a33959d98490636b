"""Catalog models: the category tree, the full-text vector, content-addressed images."""

from __future__ import annotations

import pytest
from django.contrib.postgres.search import SearchQuery
from django.db import connection

from mmsearch.images import check_image
from catalog.models import Category, Product, ProductImage, ProductTag, Tag, TagGroup, normalize_path
from catalog.storage import add_image

pytestmark = pytest.mark.django_db


def matches(word: str) -> set[str]:
    """Skus whose full-text vector matches `word`."""
    query = SearchQuery(word, config="english")
    return set(Product.objects.filter(search_vector=query).values_list("sku", flat=True))


def vector_text(product: Product) -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT search_vector::text FROM catalog_product WHERE id = %s", [product.pk])
        return cursor.fetchone()[0]


def media_files(root) -> list:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


# --- category tree ------------------------------------------------------------------------------------------

def test_normalize_path():
    assert normalize_path(" Apparel / Topwear//Tshirts/ ") == "Apparel/Topwear/Tshirts"
    with pytest.raises(ValueError, match="empty"):
        normalize_path(" / ")


def test_get_or_create_path_creates_ancestors_once():
    leaf = Category.objects.get_or_create_path("Apparel/Topwear/Tshirts")
    assert leaf.path == "Apparel/Topwear/Tshirts"
    assert leaf.name == "Tshirts"
    assert leaf.parent.path == "Apparel/Topwear"
    assert leaf.parent.parent.path == "Apparel"
    assert leaf.parent.parent.parent is None
    assert leaf.depth == 2
    again = Category.objects.get_or_create_path("Apparel / Topwear / Tshirts")
    assert again.pk == leaf.pk
    sibling = Category.objects.get_or_create_path("Apparel/Topwear/Shirts")
    assert sibling.parent_id == leaf.parent_id
    assert Category.objects.count() == 4


def test_category_name_may_not_contain_separator():
    with pytest.raises(ValueError, match="may not contain"):
        Category.objects.create(name="A/B")


def test_rename_updates_descendant_paths_and_product_search_vectors():
    leaf = Category.objects.get_or_create_path("Apparel/Topwear/Tshirts")
    mid = leaf.parent
    top = mid.parent
    in_leaf = Product.objects.create(sku="p1", title="Plain tee", category=leaf)
    in_mid = Product.objects.create(sku="p2", title="Plain top", category=mid)
    other = Product.objects.create(sku="p3", title="Plain mug", category=Category.objects.get_or_create_path("Home"))
    assert matches("apparel") == {"p1", "p2"}

    top.name = "Clothing"
    top.save()

    assert set(Category.objects.values_list("path", flat=True)) == {
        "Clothing", "Clothing/Topwear", "Clothing/Topwear/Tshirts", "Home"
    }
    assert matches("apparel") == set()
    assert matches("clothing") == {"p1", "p2"}
    assert matches("home") == {"p3"}
    in_leaf.refresh_from_db()
    assert in_leaf.category.path == "Clothing/Topwear/Tshirts"
    assert in_mid.pk and other.pk


def test_move_below_itself_is_refused():
    leaf = Category.objects.get_or_create_path("A/B/C")
    top = Category.objects.get(path="A")
    top.parent = leaf
    with pytest.raises(ValueError, match="below itself"):
        top.save()
    assert set(Category.objects.values_list("path", flat=True)) == {"A", "A/B", "A/B/C"}


def test_move_subtree_under_another_parent():
    Category.objects.get_or_create_path("A/B/C")
    other = Category.objects.get_or_create_path("X")
    node = Category.objects.get(path="A/B")
    node.parent = other
    node.save()
    assert set(Category.objects.values_list("path", flat=True)) == {"A", "X", "X/B", "X/B/C"}


# --- full-text vector ---------------------------------------------------------------------------------------

def test_search_vector_weights_title_a_and_covers_fields():
    product = Product.objects.create(
        sku="v1", title="Crimson Kurta", description="Handwoven cotton", brand="Fabindia",
        attributes={"colour": "Scarlet", "year": 2012}, category=Category.objects.get_or_create_path("Apparel/Ethnic"),
    )
    text = vector_text(product)
    assert "'crimson':1A" in text
    assert "'kurta':2A" in text
    assert "'ethnic':" in text and "B" in text.split("'ethnic':")[1].split(" ")[0]
    assert "'fabindia':" in text and "'scarlet':" in text and "'2012':" in text
    assert "'handwoven':" in text
    for word in ("crimson", "kurtas", "handwoven", "fabindia", "scarlet", "ethnic"):
        assert matches(word) == {"v1"}, word


def test_search_vector_includes_accepted_tags_only():
    product = Product.objects.create(sku="t1", title="Shirt")
    group = TagGroup.objects.create(name="Pattern")
    assert group.slug == "pattern"
    tag = Tag.objects.create(group=group, name="Striped", synonyms=["pinstripe"])
    assert tag.slug == "striped"
    pt = ProductTag.objects.create(
        product=product, tag=tag, source=ProductTag.Source.MODEL, score=0.7, model_key="m:1",
        status=ProductTag.Status.SUGGESTED,
    )
    assert matches("striped") == set()

    pt.status = ProductTag.Status.ACCEPTED
    pt.save()
    assert matches("striped") == {"t1"}
    assert matches("pinstripe") == {"t1"}

    pt.status = ProductTag.Status.REJECTED
    pt.save()
    assert matches("striped") == set()

    pt.status = ProductTag.Status.ACCEPTED
    pt.save()
    tag.name = "Checked"
    tag.save()  # a renamed tag changes the text of every product carrying it
    assert matches("striped") == set()
    assert matches("checked") == {"t1"}

    pt.delete()
    assert matches("checked") == set()


def test_editing_a_product_refreshes_its_vector():
    product = Product.objects.create(sku="e1", title="Blue jeans")
    assert matches("jeans") == {"e1"}
    product.title = "Blue chinos"
    product.save()
    assert matches("jeans") == set()
    assert matches("chinos") == {"e1"}


# --- images -------------------------------------------------------------------------------------------------

def test_same_bytes_stored_once_per_product_and_once_on_disk(image_bytes, media_root):
    a = Product.objects.create(sku="a", title="A")
    b = Product.objects.create(sku="b", title="B")
    checked = check_image(image_bytes())
    first, created = add_image(a, checked)
    assert created and first.position == 0
    again, created = add_image(a, checked)
    assert not created and again.pk == first.pk
    other, created = add_image(b, checked)
    assert created and other.pk != first.pk

    assert ProductImage.objects.count() == 2
    assert first.file.name == other.file.name == f"images/{checked.sha256[:2]}/{checked.sha256}.jpg"
    assert media_files(media_root) == [media_root / first.file.name]
    assert (media_root / first.file.name).read_bytes() == checked.data

    second, created = add_image(a, check_image(image_bytes(color=(0, 200, 0))))
    assert created and second.position == 1
    assert len(media_files(media_root)) == 2


def test_image_bytes_are_kept_unless_orientation_applies(image_bytes):
    raw = image_bytes("PNG")
    checked = check_image(raw)
    assert checked.data == raw  # sha256 is the file's own
    assert (checked.width, checked.height, checked.format) == (32, 24, "PNG")
    rotated = check_image(image_bytes(exif_orientation=6))
    assert (rotated.width, rotated.height) == (24, 32)


def test_tag_and_category_changes_queue_re_embedding(db, django_capture_on_commit_callbacks):
    """A product's text includes its accepted tags and category path, so changing them re-indexes it."""
    from mmsearch.adapter import catalog_changed
    from catalog.models import Category, Product, ProductTag, Tag, TagGroup

    received: list[list[int]] = []

    def listener(sender, product_ids, image_ids, **kwargs):
        received.append(sorted(product_ids))

    product = Product.objects.create(sku="t1", title="Plain shirt", category=Category.objects.get_or_create_path("Apparel/Shirts"))
    other = Product.objects.create(sku="t2", title="Other")
    tag = Tag.objects.create(group=TagGroup.objects.create(name="pattern"), name="striped")
    catalog_changed.connect(listener)
    try:
        with django_capture_on_commit_callbacks(execute=True):
            ProductTag.objects.create(product=product, tag=tag)
        assert received == [[product.pk]]
        received.clear()
        with django_capture_on_commit_callbacks(execute=True):
            tag.name = "pinstriped"
            tag.save()
        assert received == [[product.pk]]
        received.clear()
        with django_capture_on_commit_callbacks(execute=True):
            shirts = Category.objects.get(path="Apparel/Shirts")
            shirts.name = "Shirts & tops"
            shirts.save()
        assert received == [[product.pk]]
        assert other.pk not in sum(received, [])
    finally:
        catalog_changed.disconnect(listener)
