"""Products' attribute values as an indexed text[] of "name<US>value" terms (lower case, numbers without trailing
zeros), so an attribute filter is an index lookup instead of a JSON test on every product."""

from django.contrib.postgres.fields import ArrayField
from django.contrib.postgres.indexes import GinIndex
from django.db import migrations, models

# chr(31) (the ASCII unit separator) joins name and value: no catalog writes it inside either.
FUNCTION = r"""
CREATE OR REPLACE FUNCTION catalog_attribute_terms(attributes jsonb) RETURNS text[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT coalesce(array_agg(lower(key) || chr(31) || CASE jsonb_typeof(value)
           WHEN 'number' THEN trim_scale(value::numeric)::text
           WHEN 'string' THEN lower(value #>> '{}')
           ELSE lower(value::text) END), '{}')
  FROM jsonb_each(CASE WHEN jsonb_typeof(attributes) = 'object' THEN attributes ELSE '{}'::jsonb END)
  WHERE jsonb_typeof(value) <> 'null'
$$
"""


class Migration(migrations.Migration):

    dependencies = [
        ('catalog', '0005_match_scores'),
    ]

    operations = [
        migrations.RunSQL(FUNCTION, "DROP FUNCTION IF EXISTS catalog_attribute_terms(jsonb)"),
        migrations.AddField(
            model_name='product',
            name='attribute_terms',
            field=models.GeneratedField(
                db_persist=True,
                expression=models.Func(models.F('attributes'), function='catalog_attribute_terms'),
                output_field=ArrayField(base_field=models.TextField()),
            ),
        ),
        migrations.AddIndex(
            model_name='product',
            index=GinIndex(fields=['attribute_terms'], name='product_attribute_terms_gin'),
        ),
    ]
