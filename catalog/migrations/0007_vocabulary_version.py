"""A counter that every change to the merchant's synonyms, the tags, the tag groups or the categories bumps
(statement-level triggers, so bulk writes, deletes and truncates count too). Search reads it on every request
to know whether its cached vocabulary is stale: one row read instead of hashing those tables. The count is
bumped inside the writing transaction, so a search sees the new number only once the change is committed."""

from django.db import migrations

TABLES = ("catalog_searchsynonym", "catalog_tag", "catalog_taggroup", "catalog_category")

FORWARD = [
    "CREATE TABLE catalog_vocabulary_version (id smallint PRIMARY KEY CHECK (id = 1), n bigint NOT NULL)",
    "INSERT INTO catalog_vocabulary_version VALUES (1, 1)",
    """
    CREATE FUNCTION catalog_bump_vocabulary_version() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
      UPDATE catalog_vocabulary_version SET n = n + 1 WHERE id = 1;
      RETURN NULL;
    END
    $$
    """,
] + [
    f"CREATE TRIGGER {table}_vocabulary_version AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON {table} "
    "FOR EACH STATEMENT EXECUTE FUNCTION catalog_bump_vocabulary_version()"
    for table in TABLES
]

BACKWARD = [f"DROP TRIGGER IF EXISTS {table}_vocabulary_version ON {table}" for table in TABLES] + [
    "DROP FUNCTION IF EXISTS catalog_bump_vocabulary_version()",
    "DROP TABLE IF EXISTS catalog_vocabulary_version",
]


class Migration(migrations.Migration):

    dependencies = [
        ('catalog', '0006_attribute_terms'),
    ]

    operations = [migrations.RunSQL(FORWARD, BACKWARD)]
