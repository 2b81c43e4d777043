import datetime

import pytest
from django.core import serializers
from django.core.management import call_command
from django.db import connection
from django.utils.encoding import is_protected_type

from semantic import EmbeddingField
from semantic.passage_rows import as_floats
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


def columns(obj) -> list:
    """The EmbeddingFields of ``obj`` and the columns they add."""
    return [f for f in obj._meta.fields if f.name in ("summary", "content", "embedding") or "_" in f.name]


def plain(value):
    return as_floats(value) if value is not None and not isinstance(value, str | datetime.datetime) else value


def revision_round_trip(obj) -> dict:
    """What django-modelcluster does to a Wagtail revision (``serializable_data()``, then
    ``model_from_serializable_data()``): a field whose ``pre_save()`` is not a plain value is
    stored as its ``value_to_string()``, and every value read back with ``to_python()``."""
    stored = {}
    for field in columns(obj):
        value = field.pre_save(obj, add=False)
        stored[field.name] = value if is_protected_type(value) else field.value_to_string(obj)
    return {name: plain(obj._meta.get_field(name).to_python(text)) for name, text in stored.items()}


@pytest.mark.parametrize("filled", [False, True], ids=["never embedded", "embedded"])
def test_the_columns_survive_a_wagtail_revision_and_a_dump(filled):
    article = Article(pk=1, title="Reset a password", body="Use the link.")
    document = Document(pk=2, title="Handbook", text="Chapter one.")
    if filled:
        since = datetime.datetime(2025, 3, 1, 12, 30, 15, 250000, tzinfo=datetime.UTC)
        for obj, field, size in [(article, "embedding", 128), (document, "summary", 256), (document, "content", 3072)]:
            setattr(obj, field, [0.25 + i / 1024 for i in range(size)])  # exact in float16 too
            setattr(obj, f"{field}_spec", f"local:all-MiniLM-L6-v2|SEMANTIC_SIMILARITY|{size}")
            setattr(obj, f"{field}_embedded_hash", "05c3687e44d8fac446c0a1b2c3d4e5f6")
            if obj is document:  # edited since; the article's vector is current, so it waits for nothing
                setattr(obj, f"{field}_pending_since", since)
    for obj in (article, document):
        restored = revision_round_trip(obj)
        # Read after: pre_save() hashed the text from Python into the instance, as a save does.
        expected = {f.name: plain(f.value_from_object(obj)) for f in columns(obj)}
        assert restored == expected
        assert {name for name, value in expected.items() if value is None} == (
            {"embedding_pending_since"} & set(expected) if filled else set(expected) - {"content_source_hash"}
        )
        # dumpdata and loaddata carry the vectors and the columns as before.
        (loaded,) = serializers.deserialize("json", serializers.serialize("json", [obj]))
        assert {f.name: plain(f.value_from_object(loaded.object)) for f in columns(obj)} == expected


def test_the_nulls_a_revision_holds_load_as_nulls():
    """As Django and pgvector write them (so do revisions stored by earlier releases), which
    to_python() refused or kept as text."""
    content = {
        "embedding": "",
        "embedding_spec": "None",
        "embedding_embedded_hash": "None",
        "embedding_pending_since": "",
    }
    loaded = {name: Article._meta.get_field(name).to_python(text) for name, text in content.items()}
    assert loaded == dict.fromkeys(content)
    assert Document._meta.get_field("content").to_python("") is None  # a halfvec field
    assert Document._meta.get_field("content_source_hash").to_python("None") is None
    # The hash of an empty text from Python is "", not a NULL.
    assert Document._meta.get_field("content_source_hash").to_python("") == ""


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
