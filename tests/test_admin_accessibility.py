"""What a screen reader gets from the admin pages the app adds, checked in their HTML the way
Django's own admin templates do it: every table header has a name (visible or in a
``visually-hidden`` span), headers say what they head (``scope``), an input with an error
points at it (``aria-invalid``, ``aria-describedby``), a region is named by its heading, and
a control repeated on every row says which row it is for.
"""

from html.parser import HTMLParser

import pytest
from django.core.cache import cache
from django.urls import reverse

from semantic import embed_pending
from tests.test_admin_csp import TITLES
from tests.testapp.models import Article
from tests.topicapp.models import Ticket

pytestmark = pytest.mark.django_db(transaction=True)

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class Element:
    def __init__(self, tag, attrs, parent):
        self.tag, self.attrs, self.parent, self.children = tag, dict(attrs), parent, []

    def text(self):
        """The text inside, visually hidden text included (a screen reader reads it)."""
        return " ".join(self.raw_text().split())

    def raw_text(self):
        return "".join(c if isinstance(c, str) else c.raw_text() for c in self.children)

    def spoken(self):
        """The text inside without what ``aria-hidden`` hides: roughly what a screen reader says."""
        if self.attrs.get("aria-hidden") == "true":
            return ""
        parts = [c if isinstance(c, str) else " " + c.spoken() + " " for c in self.children]
        return " ".join("".join(parts).split())

    def name(self):
        """An accessible name, as far as these pages need: aria-label, else the text (or value of a button)."""
        if "aria-label" in self.attrs:
            return self.attrs["aria-label"]
        return self.attrs.get("value", "") if self.tag == "input" else self.spoken()

    def iter(self, tag=None, **attrs):
        for child in self.children:
            if isinstance(child, Element):
                if (tag is None or child.tag == tag) and all(child.attrs.get(k) == v for k, v in attrs.items()):
                    yield child
                yield from child.iter(tag, **attrs)

    def classes(self):
        return self.attrs.get("class", "").split()


class TreeBuilder(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.root = self.current = Element("#document", {}, None)

    def handle_starttag(self, tag, attrs):
        element = Element(tag, attrs, self.current)
        self.current.children.append(element)
        if tag not in VOID:
            self.current = element

    def handle_endtag(self, tag):
        open_element = self.current
        while open_element is not None and open_element.tag != tag:
            open_element = open_element.parent
        if open_element is not None and open_element.parent is not None:
            self.current = open_element.parent

    def handle_data(self, data):
        self.current.children.append(data)


def parse(response):
    assert response.status_code == 200
    builder = TreeBuilder()
    builder.feed(response.content.decode())
    return builder.root


def content(response):
    """The page's #content-main: what the app renders, not Django's header and sidebar."""
    return next(parse(response).iter(id="content-main"))


def by_id(root, element_id):
    found = list(root.iter(id=element_id))
    assert len(found) == 1, element_id
    return found[0]


@pytest.fixture
def rows(fake_gemini):
    cache.clear()
    Article.objects.bulk_create(Article(title=title) for title in TITLES)
    Ticket.objects.bulk_create(
        Ticket(text=text) for text in ["my card has not arrived", "where is my new card", "I forgot my passcode"]
    )
    embed_pending()
    return list(Article.objects.order_by("pk"))


def test_the_similarity_bar_is_hidden_and_the_number_read_once(admin_client, rows):
    """The ``<meter>`` draws the number beside it: unnamed, it was read as a second, nameless value."""
    response = admin_client.get(reverse("admin:testapp_article_changelist"), {"q": "reset password", "semantic": "1"})
    cells = [cell for cell in parse(response).iter("td") if "field-search_similarity" in cell.classes()]
    assert cells
    for cell in cells:
        (meter,) = cell.iter("meter")
        assert meter.attrs.get("aria-hidden") == "true"
        (score,) = cell.iter("span", **{"class": "semantic-score"})
        assert cell.spoken() == score.text()


def described_by(root, element):
    """The texts of the elements an element's aria-describedby names, each id on the page once."""
    return [by_id(root, element_id).text() for element_id in element.attrs.get("aria-describedby", "").split()]


@pytest.mark.parametrize(
    "url, name, bad, error",
    [
        ("admin:testapp_article_duplicates", "threshold", "abc", "The threshold must be a number from -1 to 1"),
        ("admin:topicapp_ticket_topics", "semantic_groups", "abc", "The number of groups must be a whole number"),
        ("admin:topicapp_ticket_topics", "semantic_groups", "99", "at most"),
    ],
)
def test_a_refused_number_marks_its_input_and_points_at_the_error(admin_client, rows, url, name, bad, error):
    """As Django's form fields do it (the Apply suggested labels page has one): aria-invalid,
    and aria-describedby naming the error list, so the error is read when the input is focused."""
    page = content(admin_client.get(reverse(url), {name: bad}))
    (field,) = page.iter("input", name=name, type=None)  # the box, not a hidden copy
    assert field.attrs.get("aria-invalid") == "true"
    descriptions = described_by(page, field)
    assert any(error in text for text in descriptions), descriptions


def test_a_good_number_is_not_marked_and_the_topics_help_is_tied_to_its_input(admin_client, rows):
    page = content(admin_client.get(reverse("admin:testapp_article_duplicates"), {"threshold": "0.5"}))
    (field,) = page.iter("input", name="threshold", type=None)  # not the dismiss forms' hidden copies
    assert "aria-invalid" not in field.attrs and "aria-describedby" not in field.attrs
    page = content(admin_client.get(reverse("admin:topicapp_ticket_topics"), {"semantic_groups": "2"}))
    (field,) = page.iter("input", name="semantic_groups", type=None)
    assert "aria-invalid" not in field.attrs
    assert described_by(page, field) == ["Leave blank to choose the number automatically; at most 50."]


@pytest.fixture
def pages(admin_client, rows):
    """The pages the app draws tables on, each with rows in its tables."""
    a, b, c, _ = rows
    articles = reverse("admin:testapp_article_changelist")
    find_similar = {"action": "find_similar", "index": 0, "_selected_action": [a.pk, c.pk]}
    return {
        "find similar": admin_client.post(articles, find_similar, follow=True),
        "duplicate review": admin_client.get(reverse("admin:testapp_article_duplicates"), {"threshold": "0.3"}),
        "compare": admin_client.get(
            reverse("admin:testapp_article_compare_duplicates"), {"first": a.pk, "second": b.pk}
        ),
        "topics": admin_client.get(reverse("admin:topicapp_ticket_topics"), {"semantic_groups": "2"}),
        "embedding status": admin_client.get(reverse("admin:semantic_status")),
    }


def test_every_table_header_has_a_name(pages):
    """A header cell with no text leaves its column (or row) unnamed; Django names such
    columns in a ``visually-hidden`` span (admin/app_list.html), and so do these pages."""
    for name, response in pages.items():
        headers = list(content(response).iter("th"))
        assert headers, name
        assert [th for th in headers if not th.text()] == [], name


def test_each_pairs_controls_name_their_pair(admin_client, rows):
    """A screen reader lists links and buttons out of their table: fifteen "Compare" and fifteen
    "Not a duplicate" could not be told apart. Each name starts with the visible text."""
    Article.objects.create(title="reset the account password")
    embed_pending()
    page = content(admin_client.get(reverse("admin:testapp_article_duplicates"), {"threshold": "0.3"}))
    compare = [a for a in page.iter("a") if "semantic-compare" in a.classes()]
    dismiss = [i for form in page.iter("form") for i in form.iter("input", type="submit")]
    assert len(compare) >= 3 and len(dismiss) >= 2
    for controls in (compare, dismiss):
        names = [control.name() for control in controls]
        assert len(set(names)) == len(names), names
        assert all(control.name().startswith(control.text() or control.attrs["value"]) for control in controls)
    pair = "“reset my account password” and “reset the password of my account”"
    assert f"Not a duplicate: {pair}" in [control.name() for control in dismiss]
    assert f"Compare: {pair}" in [control.name() for control in compare]


def test_compare_marks_a_differing_field_in_the_page_not_only_in_css(pages):
    """A mark in CSS ``content`` is lost without styles and in reader modes, and "≠" is a
    symbol screen readers may skip: the page holds the sign for the eye, words for the ear."""
    rows = list(content(pages["compare"]).iter("tr"))
    differing = [row for row in rows if "semantic-differs" in row.classes()]
    same = [row for row in rows if "semantic-differs" not in row.classes() and row.parent.tag == "tbody"]
    assert differing and same
    for row in differing:
        header = next(row.iter("th"))
        assert header.text().endswith("≠(differs)") and header.spoken().endswith(" (differs)")
    assert not any("differs" in next(row.iter("th")).text() for row in same)


def test_the_similar_items_panel_is_a_region_named_by_its_heading_and_says_what_its_numbers_are(admin_client, rows):
    """Django names its own fieldsets by their heading (aria-labelledby); a screen reader heard
    an unnamed group, then each link followed by a bare "0.336"."""
    page = parse(admin_client.get(reverse("admin:testapp_article_change", args=[rows[0].pk])))
    (panel,) = [element for element in page.iter() if "semantic-panel" in element.classes()]
    assert panel.tag == "section"  # links, not form fields
    assert by_id(page, panel.attrs["aria-labelledby"]).text().startswith("Similar items")
    items = list(panel.iter("li"))
    assert items
    for item in items:
        (score,) = item.iter("span", **{"class": "semantic-score"})
        assert item.spoken().endswith(f" similarity {score.text()}")


def test_every_table_header_says_what_it_heads(pages):
    """``scope`` on every header, as Django's changelist has, and a row header naming each row."""
    for name, response in pages.items():
        headers = list(content(response).iter("th"))
        assert [th.text() for th in headers if th.attrs.get("scope") not in ("col", "row")] == [], name


def test_status_count_links_say_what_they_count_out_of_their_table(pages):
    """A screen reader's list of links showed "72", "70", "1", "0": which model's "pending" a
    "1" was, only the table could tell, and its rows had no row header."""
    page = content(pages["embedding status"])
    table = next(page.iter("table"))
    rows = list(next(table.iter("tbody")).iter("tr"))
    article = next(row for row in rows if next(row.iter("th")).text() == "testapp.Article.embedding")
    assert next(article.iter("th")).attrs["scope"] == "row"
    links = [link.text() for link in article.iter("a")]
    assert links == [
        "4 Total, testapp.Article.embedding",
        "4 embedded, testapp.Article.embedding",
        "0 pending, testapp.Article.embedding",
        "0 stale, testapp.Article.embedding",
        "0 failed, testapp.Article.embedding",
        "0 empty, testapp.Article.embedding",
    ]
