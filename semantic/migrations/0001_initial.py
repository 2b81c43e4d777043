from django.db import migrations, models

import semantic.operations


class Migration(migrations.Migration):
    initial = True

    dependencies = []

    operations = [
        semantic.operations.CreateVectorExtension(),
        migrations.CreateModel(
            name="EmbeddingFailure",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("model_label", models.CharField(max_length=200, verbose_name="model")),
                ("field_name", models.CharField(max_length=200, verbose_name="field")),
                ("object_pk", models.CharField(max_length=200, verbose_name="object id")),
                ("source_hash", models.CharField(blank=True, max_length=32, null=True, verbose_name="text hash")),
                ("attempts", models.PositiveIntegerField(default=0, verbose_name="attempts")),
                ("error", models.TextField(verbose_name="error")),
                ("permanent", models.BooleanField(default=False, verbose_name="permanent")),
                ("first_failed_at", models.DateTimeField(auto_now_add=True, verbose_name="first failed")),
                ("last_failed_at", models.DateTimeField(auto_now=True, verbose_name="last failed")),
                ("retry_at", models.DateTimeField(blank=True, null=True, verbose_name="retry after")),
            ],
            options={
                "verbose_name": "embedding failure",
                "verbose_name_plural": "embedding failures",
                "ordering": ["-last_failed_at"],
                "constraints": [
                    models.UniqueConstraint(
                        fields=("model_label", "field_name", "object_pk"), name="semantic_failure_unique_row"
                    )
                ],
            },
        ),
    ]
