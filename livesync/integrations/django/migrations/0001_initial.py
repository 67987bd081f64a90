"""The ``livesync_outbox`` table and its ``(namespace, id)`` index."""

from django.db import migrations, models


class Migration(migrations.Migration):
    initial = True
    dependencies: list[tuple[str, str]] = []

    operations = [
        migrations.CreateModel(
            name="OutboxRow",
            fields=[
                ("id", models.BigAutoField(primary_key=True, serialize=False)),
                ("namespace", models.CharField(max_length=64)),
                ("type", models.CharField(max_length=64)),
                ("object_id", models.CharField(max_length=256)),
                ("integer_id", models.BooleanField()),
                ("flags", models.IntegerField()),
                ("created_us", models.BigIntegerField()),
            ],
            options={
                "db_table": "livesync_outbox",
                "indexes": [models.Index(fields=["namespace", "id"], name="livesync_outbox_namespace_id")],
            },
        ),
    ]
