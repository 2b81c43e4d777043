import pytest
from django.core.management import call_command
from django.db import connection

from semantic import EmbeddingField
from semantic.registry import get_embedding_field
from semantic.text import source_hash
from tests.testapp.models import Article, Document, Note, Snippet


def test_deconstruct_emits_only_names_and_plain_values():
    field = Document._meta.get_field("content")
    name, path, args, kwargs = field.deconstruct()
    assert path == "semantic.fields.EmbeddingField"
    assert args == []
    assert kwargs == {
        "dimensions": 3072,
        "source": "full_text",
        "task_type": "RETRIEVAL_DOCUMENT",
        "title_source": "title",
    }
    assert Article._meta.get_field("embedding").deconstruct()[3] == {"dimensions": 128, "source": ("title", "body")}


def test_explicit_halfvec_round_trips():
    field = EmbeddingField(source="title", dimensions=768, halfvec=True)
    assert (field.db_type(connection), field.sized_db_type()) == ("halfvec", "halfvec(768)")
    assert field.deconstruct()[3]["halfvec"] is True
    assert EmbeddingField(source="title", dimensions=768).sized_db_type() == "vector(768)"
    assert EmbeddingField(source="title", dimensions=2001).sized_db_type() == "halfvec(2001)"


def test_the_column_type_does_not_carry_the_size():
    """A size change must never be an ALTER COLUMN TYPE that old vectors cannot be cast through;
    only the storage (vector or halfvec) is in the type, and so in what AlterField compares."""
    assert EmbeddingField(source="t", dimensions=384).db_type(connection) == "vector"
    assert EmbeddingField(source="t", dimensions=2000).db_type(connection) == "vector"
    assert "dimensions" not in EmbeddingField.non_db_attrs


def test_fields_without_dimensions_have_one_size_everywhere(settings):
    field = EmbeddingField(source="t")
    assert field.dimensions == 384 and "dimensions" not in field.deconstruct()[3]
    settings.SEMANTIC = {**settings.SEMANTIC, "API_KEY": None, "BACKEND": None}
    assert EmbeddingField(source="t").dimensions == 384


@pytest.mark.parametrize("option", [{"null": False}, {"blank": False}, {"editable": True}])
def test_options_the_field_sets_itself_are_refused_not_ignored(option):
    with pytest.raises(TypeError, match="sets"):
        EmbeddingField(source="t", **option)


@pytest.mark.parametrize("task_type", ["SEMANTIC_SIMILARITY", "RETRIEVAL_DOCUMENT", "CODE_RETRIEVAL_QUERY"])
def test_gemini_task_types_are_accepted(task_type):
    assert EmbeddingField(source="t", task_type=task_type, dimensions=8).task_type == task_type


def test_unknown_task_type_is_refused_with_the_valid_ones():
    with pytest.raises(ValueError, match="RETRIEVAL_QUERY"):
        EmbeddingField(source="t", task_type="SIMILARITY", dimensions=8)


@pytest.mark.parametrize("bad", [0, -3, "768"])
def test_bad_dimensions_are_refused(bad):
    with pytest.raises(ValueError, match="dimensions"):
        EmbeddingField(source="t", dimensions=bad)


def test_companion_columns_are_hidden_from_forms():
    names = {f.name for f in Article._meta.get_fields()}
    assert {"embedding_embedded_hash", "embedding_spec", "embedding_pending_since"} <= names
    for name in ("embedding", "embedding_embedded_hash", "embedding_spec", "embedding_pending_since"):
        assert not Article._meta.get_field(name).editable
    assert "embedding_source_hash" not in names  # PostgreSQL hashes text from fields itself
    assert not Snippet._meta.get_field("embedding_source_hash").editable  # text from a method
    assert not any(getattr(f, "generated", False) for f in Article._meta.get_fields())


def test_companions_deconstruct_to_djangos_own_fields():
    """What users' migrations name must not be this app's classes."""
    for name in ("embedding_embedded_hash", "embedding_spec", "embedding_pending_since"):
        path = Article._meta.get_field(name).deconstruct()[1]
        assert path.startswith("django.db.models."), path
    assert Snippet._meta.get_field("embedding_source_hash").deconstruct()[1] == "django.db.models.CharField"


def test_get_embedding_field_errors_are_clear():
    assert get_embedding_field(Note).name == "embedding"
    with pytest.raises(ValueError, match="several EmbeddingFields"):
        get_embedding_field(Document)
    with pytest.raises(ValueError, match="no EmbeddingField named 'nope'"):
        get_embedding_field(Document, "nope")
    from semantic.models import EmbeddingFailure

    with pytest.raises(ValueError, match="has no EmbeddingField"):
        get_embedding_field(EmbeddingFailure)


@pytest.mark.django_db
@pytest.mark.parametrize("title,body", [("Ünïcödé ✓", "日本語のテキスト"), ("", "only body"), ("only title", "")])
def test_python_hash_matches_the_sql_hash(title, body):
    from semantic import suspend_embedding

    with suspend_embedding():
        article = Article.objects.create(title=title, body=body)
    field = get_embedding_field(Article)
    stored = Article.objects.annotate(h=field.stored_text_hash()).get(pk=article.pk).h
    assert stored == field.text_hash(article) == source_hash(f"{title}\n\n{body}")


@pytest.mark.django_db
def test_no_missing_migrations():
    call_command("makemigrations", "--check", "--dry-run", verbosity=0)


@pytest.mark.django_db
def test_the_search_for_work_can_use_the_partial_index():
    from django.db import connection

    from semantic.embedder import pending_rows

    field = get_embedding_field(Article)
    index = field.pending_index(Article).name
    assert index in {i.name for i in Article._meta.indexes}
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
        plan = pending_rows(Article, field).explain()
    assert index in plan


@pytest.mark.django_db
def test_pending_follows_the_text_in_the_database():
    from semantic import suspend_embedding

    field = get_embedding_field(Article)
    with suspend_embedding():
        article = Article.objects.create(title="t", body="b")

    def pending():
        return Article.objects.filter(field.pending(), pk=article.pk).exists()

    assert pending()
    Article.objects.filter(pk=article.pk).update(embedding_embedded_hash=field.text_hash(article))
    assert not pending()
    Article.objects.filter(pk=article.pk).update(body="changed")  # no save(): PostgreSQL still sees it
    assert pending()


def test_db_index_is_refused_with_the_index_to_use_instead():
    """A btree index on the vectors serves no search and refuses large vectors on insert."""
    with pytest.raises(TypeError) as refused:
        EmbeddingField(source="t", db_index=True)
    assert str(refused.value) == EmbeddingField.NO_DB_INDEX
    assert "EmbeddingIndex" in str(refused.value)
    assert "db_index" not in EmbeddingField(source="t", db_index=False).deconstruct()[3]
