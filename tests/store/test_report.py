"""service/store/report.py: counting, date windows, and the text and HTML renderings."""

import json
import re
import uuid
from datetime import date
from datetime import datetime
from datetime import timedelta
from datetime import timezone

import pytest

from service.store import card_store
from service.store import report
from service.store import schema
from tests.store import databases
from tests.store.recording import record_feedback


class Clock:
    def __init__(self):
        self.now = datetime(2025, 3, 3, 9, 0, tzinfo=timezone.utc)  # a Monday

    def __call__(self):
        return self.now


@pytest.fixture(params=databases.KINDS)
def engine(request, tmp_path):
    with databases.database(request.param, tmp_path) as url:
        engine = schema.create_engine(url)
        schema.create_schema(engine)
        yield engine
        engine.dispose()


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def store(engine, clock):
    store = card_store.CardStore(engine, salt="s", clock=clock)
    yield store
    store.close()


def issue(store, rule_id="acute-uncomplicated", *, on=None, clock=None):
    if on is not None:
        clock.now = on
    card = card_store.IssuedCard(
        card_uuid=str(uuid.uuid4()), suggestion_uuids=(str(uuid.uuid4()),), service_id="order-select",
        rule_id=rule_id, indicator="warning", rating=None, hook_instance=str(uuid.uuid4()),
        issuer="https://ehr.example.org", tenant=None, patient_id=None)
    store.record_cards([card])
    return card


def give(store, card, outcome, at="2025-03-03T10:00:00Z", code=None):
    item = {"card": card.card_uuid, "outcome": outcome, "outcomeTimestamp": at}
    if code is not None:
        item["overrideReason"] = {"reason": {"code": code, "system": "http://example.org/o"}}
    record_feedback(store, "order-select", {"feedback": [item]})


def test_empty_store(engine):
    assert report.build_report(engine) == {"rules": {}, "cards_total": 0, "feedback_total": 0}
    assert "No cards issued" in report.render_html(engine, report.build_report(engine))


def test_shape_and_counts(engine, store):
    cards = [issue(store) for _ in range(4)] + [issue(store, "no-indication")]
    give(store, cards[0], "accepted")
    give(store, cards[1], "overridden", code="already-imaged")
    give(store, cards[2], "overridden", code="already-imaged")
    give(store, cards[3], "overridden")  # no coded reason: counted as overridden only
    result = report.build_report(engine)
    assert result == {
        "rules": {
            "acute-uncomplicated": {"cards": 4, "accepted": 1, "overridden": 3,
                                    "override_reasons": {"already-imaged": 2}, "acceptance_rate": 0.25},
            "no-indication": {"cards": 1, "accepted": 0, "overridden": 0, "override_reasons": {}},
        },
        "cards_total": 5,
        "feedback_total": 4,
    }


def test_latest_feedback_on_a_card_wins(engine, store):
    card, other = issue(store), issue(store)
    give(store, card, "overridden", at="2025-03-03T10:00:00Z", code="first")
    give(store, card, "accepted", at="2025-03-03T11:00:00Z")
    give(store, card, "overridden", at="2025-03-03T10:30:00Z", code="late-arrival-older-event")
    # Same outcomeTimestamp: the one received last wins.
    give(store, other, "accepted", at="2025-03-04T10:00:00Z")
    give(store, other, "overridden", at="2025-03-04T10:00:00Z", code="second")
    entry = report.build_report(engine)["rules"]["acute-uncomplicated"]
    assert (entry["cards"], entry["accepted"], entry["overridden"]) == (2, 1, 1)
    assert entry["override_reasons"] == {"second": 1}
    assert report.build_report(engine)["feedback_total"] == 2


def test_window_is_by_issue_date_inclusive(engine, store, clock):
    day = datetime(2025, 3, 3, 0, 0, tzinfo=timezone.utc)
    before = issue(store, on=day - timedelta(microseconds=1), clock=clock)
    first = issue(store, on=day, clock=clock)
    last = issue(store, on=day + timedelta(days=2, hours=23, minutes=59), clock=clock)
    after = issue(store, on=day + timedelta(days=3), clock=clock)
    for card in (before, first, last, after):
        give(store, card, "accepted", at="2025-04-01T00:00:00Z")  # feedback time does not matter
    totals = lambda **k: report.build_report(engine, **k)["cards_total"]  # noqa: E731
    assert totals() == 4
    assert totals(since=date(2025, 3, 3), until=date(2025, 3, 5)) == 2
    assert totals(since=date(2025, 3, 3)) == 3
    assert totals(until=date(2025, 3, 2)) == 1
    assert report.build_report(engine, since=date(2025, 3, 3), until=date(2025, 3, 5))["feedback_total"] == 2


def test_weekly_outcomes(engine, store, clock):
    monday = datetime(2025, 3, 3, 8, 0, tzinfo=timezone.utc)
    a = issue(store, on=monday, clock=clock)
    issue(store, on=monday + timedelta(days=6, hours=15), clock=clock)       # Sunday, same week
    b = issue(store, on=monday + timedelta(weeks=2), clock=clock)            # a week with nothing between
    issue(store, "no-indication", on=monday + timedelta(weeks=1), clock=clock)
    give(store, a, "accepted")
    give(store, b, "overridden", code="x")
    weeks = report.weekly_outcomes(engine)
    assert [w.start for w in weeks["acute-uncomplicated"]] == [date(2025, 3, 3), date(2025, 3, 10), date(2025, 3, 17)]
    assert [(w.accepted, w.overridden, w.no_feedback) for w in weeks["acute-uncomplicated"]] == [
        (1, 0, 1), (0, 0, 0), (0, 1, 0)]
    assert [w.cards for w in weeks["no-indication"]] == [0, 1, 0]


def test_render_text(engine, store):
    card = issue(store)
    give(store, card, "overridden", code="patient-preference")
    text = report.render_text(report.build_report(engine), since=date(2025, 3, 1))
    assert "since 2025-03-01" in text
    assert re.search(r"acute-uncomplicated\s+1\s+0\s+1\s+0 %", text)
    assert "override reason patient-preference: 1" in text


def test_render_html_is_self_contained_and_escaped(engine, store, clock):
    for week in range(3):
        card = issue(store, on=datetime(2025, 3, 3, tzinfo=timezone.utc) + timedelta(weeks=week), clock=clock)
        give(store, card, "overridden", code="<script>alert(1)</script>")
    page = report.render_html(engine, report.build_report(engine))
    assert page.startswith("<!DOCTYPE html>") and page.count("<svg") == 1
    assert "<script" not in page and "&lt;script&gt;" in page
    external = re.findall(r"(?:src|href)\s*=|url\(|@import|https?://(?!www\.w3\.org/2000/svg)", page)
    assert external == []
    assert page.count("<rect") == 3 and "week of 2025-03-17" in page


# --- the command ------------------------------------------------------------------------------------


def test_report_command(engine, store, tmp_path):
    from click.testing import CliRunner

    from service.cli import cli

    card = issue(store)
    give(store, card, "overridden", code="patient-specific")
    store.flush()
    env = {"LUMBAR_MRI_CDS_CONFIG": "", "LUMBAR_MRI_CDS_DATABASE_URL": engine.url.render_as_string(hide_password=False)}
    runner = CliRunner()
    answer = runner.invoke(cli, ["report", "--json"], env=env, catch_exceptions=False)
    assert answer.exit_code == 0
    assert json.loads(answer.output) == report.build_report(engine)

    page = tmp_path / "report.html"
    answer = runner.invoke(cli, ["report", "--since", "2025-03-01", "--until", "2025-03-31", "--html", str(page)],
                           env=env, catch_exceptions=False)
    assert answer.exit_code == 0
    assert "acute-uncomplicated" in answer.output and "from 2025-03-01 to 2025-03-31" in answer.output
    assert "<svg" in page.read_text()

    answer = runner.invoke(cli, ["report", "--json", "--since", "2025-04-01"], env=env, catch_exceptions=False)
    assert json.loads(answer.output)["cards_total"] == 0
    assert runner.invoke(cli, ["report", "--since", "March"], env=env).exit_code == 2
