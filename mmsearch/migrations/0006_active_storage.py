from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("mmsearch", "0005_job_kinds")]

    operations = [
        migrations.AddField(
            model_name="activemodel",
            name="storage",
            field=models.CharField(default="vector", max_length=10),
        ),
    ]
