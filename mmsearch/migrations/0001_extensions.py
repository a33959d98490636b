from django.contrib.postgres.operations import CreateExtension, TrigramExtension
from django.db import migrations


class Migration(migrations.Migration):
    """pgvector for embeddings, pg_trgm for typo-tolerant text search (needs a role allowed to create them)."""

    initial = True
    dependencies: list = []
    operations = [CreateExtension("vector"), TrigramExtension()]
