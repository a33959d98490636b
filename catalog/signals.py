"""Keep derived data current: the full-text vector, category paths, and the 'catalog changed' hook."""

from __future__ import annotations

from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from catalog.changes import notify_changed
from catalog.models import Caption, Category, Product, ProductImage, ProductTag, Tag
from catalog.search_text import refresh_search_vectors


def text_changed(product_ids) -> None:
    """The text of these products changed: refresh their full-text vector and have them re-embedded."""
    ids = list(product_ids)
    refresh_search_vectors(ids)
    notify_changed(product_ids=ids)


@receiver(post_save, sender=Product)
def product_saved(sender, instance: Product, raw=False, **kwargs):
    if raw:
        return
    text_changed([instance.pk])


@receiver(post_save, sender=ProductImage)
def image_saved(sender, instance: ProductImage, created: bool, raw=False, **kwargs):
    if raw or not created:
        return
    notify_changed(image_ids=[instance.pk])


@receiver([post_save, post_delete], sender=ProductTag)
def product_tag_changed(sender, instance: ProductTag, raw=False, **kwargs):
    if raw:
        return
    text_changed([instance.product_id])  # accepted tags are part of the product's text


@receiver([post_save, post_delete], sender=Caption)
def caption_changed(sender, instance: Caption, raw=False, **kwargs):
    if raw:
        return
    text_changed([instance.product_id])  # accepted captions are part of the product's text


@receiver(post_save, sender=Tag)
def tag_saved(sender, instance: Tag, raw=False, **kwargs):
    if raw:
        return
    text_changed(ProductTag.objects.filter(tag=instance).values_list("product_id", flat=True))


@receiver(post_save, sender=Category)
def category_saved(sender, instance: Category, created: bool, raw=False, **kwargs):
    if raw or created:
        return
    # A rename or move changes the paths below it and the text of every product in the subtree.
    for child in instance.children.all():
        child.save()
    text_changed(Product.objects.filter(category=instance).values_list("pk", flat=True))
