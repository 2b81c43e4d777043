import logging

from django.apps import AppConfig
from django.db.models.signals import post_migrate, pre_migrate
from django.utils.translation import gettext_lazy as _


class SemanticConfig(AppConfig):
    name = "semantic"
    verbose_name = _("Semantic search")
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from semantic import checks, database_checks, model_checks  # noqa: F401  (registers the system checks)
        from semantic.definitions import record_definitions
        from semantic.hooks import connect_all
        from semantic.migration_plan import inject_operations
        from semantic.operations import ensure_vector_extension
        from semantic.relation_hooks import connect as connect_relations
        from semantic.running_task import watch_tasks
        from semantic.sized_columns import unsize_vector_columns
        from semantic.tasks import install_sweep_schedule
        from semantic.tenancy import SchemaInLog
        from semantic.warmup import connect as warm_up_where_needed

        # Before any app's migrations run, so models with an EmbeddingField can be
        # created without their migrations depending on this app's.
        pre_migrate.connect(ensure_vector_extension, sender=self)
        # What the app stores about rows follows renames and removals in the project's migrations.
        pre_migrate.connect(inject_operations, sender=self)
        post_migrate.connect(install_sweep_schedule, sender=self)
        # Vector columns an old version created with their size become what a new database has.
        post_migrate.connect(unsize_vector_columns, sender=self)
        # The new code's field definitions: workers still running the old code stop embedding.
        post_migrate.connect(record_definitions, sender=self)
        connect_all()
        # Text from Python that reads many-to-many rows (a tag list) changes with them.
        connect_relations()
        # A run inside a django-q2 task stops before the task's timeout would kill it.
        watch_tasks()
        # With schemas per tenant, the app's log lines say which tenant's rows they are about.
        logging.getLogger("semantic").addFilter(SchemaInLog())
        # The local model loads in the background in web and worker processes only.
        warm_up_where_needed()
