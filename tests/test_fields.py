import pytest
from django.core.management import call_command
from django.db import connection

from semantic import EmbeddingField
from semantic.fields import get_embedding_field
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
    assert field.db_type(connection) == "halfvec(768)"
    assert field.deconstruct()[3]["halfvec"] is True
    assert EmbeddingField(source="title", dimensions=768).db_type(connection) == "vector(768)"
    assert EmbeddingField(source="title", dimensions=2001).db_type(connection) == "halfvec(2001)"


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
    assert {"embedding_source_hash", "embedding_embedded_hash", "embedding_model"} <= names
    for name in ("embedding", "embedding_source_hash", "embedding_embedded_hash", "embedding_model"):
        assert not Article._meta.get_field(name).editable
    assert Article._meta.get_field("embedding_source_hash").generated
    assert not Snippet._meta.get_field("embedding_source_hash").generated  # method source


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
def test_python_hash_matches_the_generated_column(title, body):
    from semantic import suspend_embedding

    with suspend_embedding():
        article = Article.objects.create(title=title, body=body)
    article.refresh_from_db()
    field = get_embedding_field(Article)
    assert article.embedding_source_hash == field.text_hash(article) == source_hash(f"{title}\n\n{body}")


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
def test_pending_column_follows_both_hashes():
    from semantic import suspend_embedding

    with suspend_embedding():
        article = Article.objects.create(title="t", body="b")
    article.refresh_from_db()
    assert article.embedding_pending is True
    Article.objects.filter(pk=article.pk).update(embedding_embedded_hash=article.embedding_source_hash)
    article.refresh_from_db()
    assert article.embedding_pending is False
    Article.objects.filter(pk=article.pk).update(body="changed")
    article.refresh_from_db()
    assert article.embedding_pending is True
