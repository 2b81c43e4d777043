"""A KeywordIndex holds the words of a bounded prefix of the text (semantic.keyword_index).

PostgreSQL refuses a ``tsvector`` over 1 MB, and a text of many distinct words (a log
dump, a data table, base64, a long document in several scripts) reaches that in about
170,000 characters: without the bound, saving such a row, or adding the index to a table
that holds one, fails. A query is bounded too (semantic.keyword.WordsQuery): a pasted
text is searched for its first distinct words, each once.
"""

import random
import string

import pytest
from django.core.paginator import Paginator
from django.db import ProgrammingError, connection, migrations, models
from django.db.migrations.autodetector import MigrationAutodetector
from django.db.migrations.graph import MigrationGraph
from django.db.migrations.questioner import MigrationQuestioner
from django.db.migrations.state import ModelState, ProjectState
from django.db.migrations.writer import MigrationWriter
from django.db.models.sql import Query

from semantic import KeywordIndex, embed_pending, hybrid, suspend_embedding
from semantic.keyword import MAX_QUERY_WORDS, WordsQuery, config_name, keyword_search
from semantic.keyword_index import MAX_CHARS
from tests.docsapp.models import Doc, Page

pytestmark = pytest.mark.django_db(transaction=True)


def distinct_words(count: int) -> str:
    """``count`` distinct eight-letter words, 9 characters each: 1.8 MB of ``tsvector``."""
    rng = random.Random(1)
    return " ".join("".join(rng.choices(string.ascii_lowercase, k=8)) for _ in range(count))


@pytest.fixture(scope="module")
def long_text():
    return "The zyxquartz module was renamed. " + distinct_words(150_000)


@pytest.mark.parametrize("model", [Doc, Page], ids=["stored column", "expression"])
def test_a_row_of_150000_distinct_words_saves_and_is_found_by_a_word_near_its_start(model, long_text):
    row = model.objects.create(title="Big log", text=long_text)
    model.objects.create(title="Gardening", text="Tomatoes need sun, water and a stake to climb.")
    assert list(keyword_search(model.objects.all(), "zyxquartz").values_list("pk", flat=True)) == [row.pk]
    embed_pending()
    assert next(iter(hybrid(model.objects.all(), "zyxquartz module"))).pk == row.pk


def test_adding_the_index_to_a_table_that_holds_such_a_row_works(long_text):
    (index,) = [index for index in Page._meta.indexes if index.name == "page_keywords"]
    state = ProjectState.from_apps(Page._meta.apps)
    with connection.schema_editor() as editor:
        editor.remove_index(Page, index)
    row = Page.objects.create(title="Big log", text=long_text)
    add = migrations.AddIndex("page", index)
    after = state.clone()
    add.state_forwards("docsapp", after)
    with connection.schema_editor() as editor:
        add.database_forwards("docsapp", editor, state, after)
    assert list(keyword_search(Page.objects.all(), "zyxquartz").values_list("pk", flat=True)) == [row.pk]


def test_the_worst_text_measured_stays_under_postgresqls_limit_at_max_chars():
    """Single ideographs of the supplementary planes joined by hyphens: a lexeme for each
    and one for each compound, about 8.5 bytes a character (the most of those measured)."""
    rng = random.Random(1)
    ideographs = [chr(c) for c in rng.sample(range(0x20000, 0x2A6DF), 42_000)]
    text = " ".join("-".join(ideographs[i : i + 300]) for i in range(0, len(ideographs), 300))
    text = (text + " ") * 2  # past the bound: repeats add positions
    assert len(text) > MAX_CHARS
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_column_size(to_tsvector('simple', left(%s, %s)))", [text, MAX_CHARS])
        (size,) = cursor.fetchone()
    assert 700_000 < size < 1_048_575 * 0.9


def test_an_index_from_a_migration_written_before_the_bound_is_rebuilt_by_makemigrations():
    """Older migrations name semantic.keyword.KeywordIndex: the whole-text index they built."""
    from semantic import keyword

    def state(index):
        project = ProjectState()
        project.add_model(
            ModelState(
                "docsapp",
                "Page",
                [("id", models.AutoField(primary_key=True)), ("text", models.TextField())],
                {"indexes": [index]},
            )
        )
        return project

    def changes(old, new):
        detector = MigrationAutodetector(old, new, MigrationQuestioner(specified_apps={"docsapp"}))
        return detector.changes(graph=MigrationGraph())

    before = state(keyword.KeywordIndex(fields=["text"], name="page_words"))
    after = state(KeywordIndex(fields=["text"], name="page_words"))
    (migration,) = changes(before, after)["docsapp"]
    assert [type(operation).__name__ for operation in migration.operations] == ["RemoveIndex", "AddIndex"]
    assert "semantic.KeywordIndex(fields=['text'], max_chars=100000, name='page_words')" in (
        MigrationWriter(migration).as_string()
    )
    assert changes(after, state(KeywordIndex(fields=["text"], name="page_words"))) == {}


def query_terms(text: str, match: str = "any") -> int:
    """How many words (lexemes, repeats included) the tsquery a search makes of ``text`` has."""
    compiler = Query(Doc).get_compiler(connection=connection)
    sql, params = WordsQuery(text, "english", match=match).as_sql(compiler, connection)
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT numnode({sql})", params)
        (nodes,) = cursor.fetchone()
    return (nodes + 1) // 2  # n words joined by n - 1 operators


@pytest.mark.parametrize("model", [Doc, Page], ids=["stored column", "expression"])
def test_a_pasted_text_of_repeated_words_is_searched_for_each_word_once(model):
    """A search box takes a paste: 100,000 characters of three words repeated made a tsquery of
    thousands of OR-ed terms, and ts_rank took seconds over a thousand rows."""
    row = model.objects.create(title="Account help", text="How to reset a forgotten password.")
    model.objects.create(title="Gardening", text="Tomatoes need sun, water and a stake to climb.")
    text = "reset password help " * 5000  # 100,000 characters
    assert query_terms(text) == 3
    assert list(keyword_search(model.objects.all(), text).values_list("pk", flat=True)) == [row.pk]


def test_a_long_query_matches_its_first_distinct_words_only():
    words = distinct_words(1000).split()
    first = Doc.objects.create(title="First", text=words[0])
    Doc.objects.create(title="Last", text=words[-1])
    assert query_terms(" ".join(words)) == MAX_QUERY_WORDS
    assert list(keyword_search(Doc.objects.all(), " ".join(words)).values_list("pk", flat=True)) == [first.pk]
    assert query_terms(" ".join(words), match="all") <= len(words)


#: The two ways to search by keywords with a text.
SEARCHES = [keyword_search, lambda rows, text, **options: hybrid(rows, text, weights=(1, 0), **options)]


@pytest.mark.parametrize("search", SEARCHES, ids=["keyword_search", "hybrid by keywords"])
def test_a_config_other_than_the_stored_columns_is_refused_at_the_call(search):
    """Doc.search is built in 'english': 'passwords' parsed in 'simple' silently matched nothing."""
    row = Doc.objects.create(title="Account help", text="Reset forgotten passwords here.")
    with pytest.raises(ValueError, match=r"docsapp.Doc.search holds words made in the 'english' .* config='simple'"):
        search(Doc.objects.all(), "passwords", config="simple")
    for same in ("english", "English", "pg_catalog.english"):
        assert [found.pk for found in search(Doc.objects.all(), "passwords", config=same)] == [row.pk]
    # A schema-qualified name is the same configuration as its bare name on the search path.
    assert config_name("public.english_custom") == config_name("English_Custom") == "english_custom"
    page = Page.objects.create(title="Account help", text="Reset forgotten passwords here.")
    # An expression index parses both sides in the config given: any is consistent.
    assert [found.pk for found in search(Page.objects.all(), "passwords", config="simple")] == [page.pk]


def test_a_keyword_search_runs_no_query_until_its_rows_are_read(django_assert_num_queries):
    """Printing or building a search (logging, a debug toolbar, async code) touches no database;
    an unknown configuration is PostgreSQL's error, naming it, when the rows are read."""
    Page.objects.create(title="Account help", text="Reset forgotten passwords here.")
    with django_assert_num_queries(0):
        for config in ("english", "klingon"):
            assert "to_tsvector" in str(keyword_search(Page.objects.all(), "passwords", config=config).query)
    with pytest.raises(ProgrammingError, match='text search configuration "klingon" does not exist'):
        list(keyword_search(Page.objects.all(), "passwords", config="klingon"))


def test_rows_of_equal_relevance_come_by_primary_key_and_pages_neither_repeat_nor_skip():
    """Ordered by relevance alone, ties came in whatever order each LIMIT's sort gave, so
    pages of a search repeat some rows and never show others."""
    with suspend_embedding():
        Page.objects.bulk_create(Page(title="Glacier report", text=f"Glacier ice {'x' * (i % 7)}") for i in range(300))
    found = keyword_search(Page.objects.all(), "glacier")
    pages = Paginator(found, 20)
    shown = [row.pk for number in pages.page_range for row in pages.page(number)]
    ranked = sorted(found.values_list("keyword_relevance", "pk"), key=lambda row: (-row[0], row[1]))
    assert shown == [pk for _, pk in ranked]
