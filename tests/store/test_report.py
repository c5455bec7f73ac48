"""service/store/report.py: counting, date windows, and the text and HTML renderings."""

import dataclasses
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


def issue(store, rule_id="acute-uncomplicated", *, on=None, clock=None, patient=None, hook_instance=None,
          service="order-select", modality="mri"):
    if on is not None:
        clock.now = on
    card = card_store.IssuedCard(
        card_uuid=str(uuid.uuid4()), suggestion_uuids=(str(uuid.uuid4()),), service_id=service,
        rule_id=rule_id, indicator="warning", rating=None, hook_instance=hook_instance or str(uuid.uuid4()),
        issuer="https://ehr.example.org", tenant=None, patient_id=patient, modality=modality)
    store.record_cards([card])
    return card


def give(store, card, outcome, at="2025-03-03T10:00:00Z", code=None):
    item = {"card": card.card_uuid, "outcome": outcome, "outcomeTimestamp": at}
    if outcome == "accepted":
        item["acceptedSuggestions"] = [{"id": card.suggestion_uuids[0]}]
    if code is not None:
        item["overrideReason"] = {"reason": {"code": code, "system": "http://example.org/o"}}
    record_feedback(store, "order-select", {"feedback": [item]})


SCOPE = report.Scope(database="sqlite:////srv/cds.db", generated_at=datetime(2025, 4, 1, 12, 0, tzinfo=timezone.utc),
                     labels={"patient-specific": "Patient-specific reason (see comment)"})


def test_empty_store(engine):
    assert report.build_report(engine) == {"rules": {}, "modalities": {}, "cards_total": 0, "refires_total": 0, "feedback_total": 0}
    assert "No cards issued" in report.render_html(report.build_report(engine), report.weeks_of(report.decisions(engine)), SCOPE)


def test_shape_and_counts(engine, store):
    cards = [issue(store), issue(store), issue(store, modality="ct"), issue(store, modality="xr"), issue(store, "no-indication")]
    give(store, cards[0], "accepted")
    give(store, cards[1], "overridden", code="already-imaged")
    give(store, cards[2], "overridden", code="already-imaged")
    give(store, cards[3], "overridden")  # no coded reason: counted as overridden only
    result = report.build_report(engine)
    ct = {"cards": 1, "refires": 0, "accepted": 0, "overridden": 1, "override_reasons": {"already-imaged": 1}, "acceptance_rate": 0.0}
    xr = {"cards": 1, "refires": 0, "accepted": 0, "overridden": 1, "override_reasons": {}, "acceptance_rate": 0.0}
    no_feedback = {"cards": 1, "refires": 0, "accepted": 0, "overridden": 0, "override_reasons": {}}
    assert result == {
        "rules": {
            "acute-uncomplicated": {
                "cards": 4, "refires": 0, "accepted": 1, "overridden": 3, "override_reasons": {"already-imaged": 2},
                "acceptance_rate": 0.25,
                "modalities": {
                    "ct": ct,
                    "mri": {"cards": 2, "refires": 0, "accepted": 1, "overridden": 1, "override_reasons": {"already-imaged": 1},
                            "acceptance_rate": 0.5},
                    "xr": xr,
                },
            },
            "no-indication": {**no_feedback, "modalities": {"mri": no_feedback}},
        },
        "modalities": {
            "ct": ct,
            "mri": {"cards": 3, "refires": 0, "accepted": 1, "overridden": 1, "override_reasons": {"already-imaged": 1},
                    "acceptance_rate": 0.5},
            "xr": xr,
        },
        "cards_total": 5,
        "refires_total": 0,
        "feedback_total": 4,
    }
    text = report.render_text(result, SCOPE)
    assert re.search(r"^    ct\s+1\s+0\s+0\s+1\s+0 % \(0 of 1\)$", text, re.M)
    assert re.search(r"^modality xr\s+1\s+0\s+0\s+1\s+0 % \(0 of 1\)$", text, re.M)
    assert "<td>modality ct</td><td>1</td><td>0</td>" in report.render_html(result, report.weeks_of(report.decisions(engine)), SCOPE)


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


def test_weeks_of(engine, store, clock):
    monday = datetime(2025, 3, 3, 8, 0, tzinfo=timezone.utc)
    a = issue(store, on=monday, clock=clock)
    issue(store, on=monday + timedelta(days=6, hours=15), clock=clock)       # Sunday, same week
    b = issue(store, on=monday + timedelta(weeks=2), clock=clock)            # a week with nothing between
    issue(store, "no-indication", on=monday + timedelta(weeks=1), clock=clock)
    give(store, a, "accepted")
    give(store, b, "overridden", code="x")
    weeks = report.weeks_of(report.decisions(engine))
    assert [w.start for w in weeks["acute-uncomplicated"]] == [date(2025, 3, 3), date(2025, 3, 10), date(2025, 3, 17)]
    assert [(w.accepted, w.overridden, w.no_feedback) for w in weeks["acute-uncomplicated"]] == [
        (1, 0, 1), (0, 0, 0), (0, 1, 0)]
    assert [w.cards for w in weeks["no-indication"]] == [0, 1, 0]


def test_render_text_says_what_it_describes(engine, store):
    card = issue(store)
    give(store, card, "overridden", code="patient-specific")
    other = issue(store)
    give(store, other, "overridden", code="not-in-the-table")
    scope = dataclasses.replace(SCOPE, since=date(2025, 3, 1))
    text = report.render_text(report.build_report(engine), scope)
    assert "database:  sqlite:////srv/cds.db" in text
    assert "period:    cards issued since 2025-03-01 (UTC days)" in text
    assert "generated: 2025-04-01 12:00:00 UTC" in text
    assert "within 10 minutes counts once" in text
    assert re.search(r"acute-uncomplicated\s+2\s+0\s+0\s+2\s+0 % \(0 of 2\)", text)  # counts beside the rate
    assert "override reason Patient-specific reason (see comment) (patient-specific): 1" in text  # the label
    assert "override reason not-in-the-table: 1" in text  # a code the table does not know: as it is


def test_render_html_is_self_contained_and_escaped(engine, store, clock):
    for week in range(3):
        card = issue(store, on=datetime(2025, 3, 3, tzinfo=timezone.utc) + timedelta(weeks=week), clock=clock)
        give(store, card, "overridden", code="<script>alert(1)</script>")
    page = report.render_html(report.build_report(engine), report.weeks_of(report.decisions(engine)), SCOPE)
    assert page.startswith("<!DOCTYPE html>") and page.count("<svg") == 1
    assert "<script" not in page and "&lt;script&gt;" in page
    external = re.findall(r"(?:src|href)\s*=|url\(|@import|https?://(?!www\.w3\.org/2000/svg)", page)
    assert external == []
    assert page.count("<rect") == 3 and "week of 2025-03-17" in page


# --- the command ------------------------------------------------------------------------------------


def test_render_html_labels_counts_and_y_axis(engine, store, clock):
    monday = datetime(2025, 3, 3, 9, 0, tzinfo=timezone.utc)
    for n in range(7):
        card = issue(store, on=monday + timedelta(hours=n), clock=clock)
        if n < 3:
            give(store, card, "accepted")
        elif n < 5:
            give(store, card, "overridden", code="patient-specific")
    store.flush()
    page = report.render_html(report.build_report(engine), report.weeks_of(report.decisions(engine)), SCOPE)
    assert "Patient-specific reason (see comment) (patient-specific): 2" in page
    assert "60 % (3 of 5)" in page
    assert re.findall(r'<text class="tick"[^>]*>(\d+)</text>', page) == ["0", "2", "4", "6", "8"]
    assert "sqlite:////srv/cds.db" in page and "2025-04-01 12:00:00 UTC" in page


@pytest.mark.parametrize(("highest", "ticks"), [
    (0, [0, 1]), (3, [0, 1, 2, 3]), (6, [0, 1, 2, 3, 4, 5, 6]), (7, [0, 2, 4, 6, 8]), (23, [0, 5, 10, 15, 20, 25]),
    (99, [0, 20, 40, 60, 80, 100]), (1234, [0, 500, 1000, 1500]),
])
def test_y_ticks(highest, ticks):
    assert report.y_ticks(highest) == ticks


# --- re-fires: the same decision sent again counts once -------------------------------------------


def test_refires_of_the_same_order_count_once_with_their_latest_feedback(engine, store, clock):
    start = datetime(2025, 3, 3, 9, 0, tzinfo=timezone.utc)
    cards = [issue(store, on=start + timedelta(minutes=3 * n), clock=clock, patient="p1") for n in range(4)]
    give(store, cards[0], "overridden", at="2025-03-03T09:01:00Z", code="patient-specific")
    give(store, cards[3], "accepted", at="2025-03-03T09:10:00Z")  # on the last re-fire, later
    store.flush()
    entry = report.build_report(engine)["rules"]["acute-uncomplicated"]
    assert (entry["cards"], entry["refires"], entry["accepted"], entry["overridden"]) == (1, 3, 1, 0)
    assert report.build_report(engine, dedup=timedelta(0))["rules"]["acute-uncomplicated"]["cards"] == 4


def test_what_is_not_a_refire(engine, store, clock):
    start = datetime(2025, 3, 3, 9, 0, tzinfo=timezone.utc)
    issue(store, on=start, clock=clock, patient="p1")
    issue(store, on=start + timedelta(minutes=11), clock=clock, patient="p1")              # past the window
    issue(store, on=start + timedelta(minutes=12), clock=clock, patient="p2")              # another patient
    issue(store, "no-indication", on=start + timedelta(minutes=13), clock=clock, patient="p1")  # another rule
    issue(store, on=start + timedelta(minutes=14), clock=clock, patient="p1", service="order-sign")  # another hook
    issue(store, on=start + timedelta(minutes=15), clock=clock)                            # no patient known
    issue(store, on=start + timedelta(minutes=16), clock=clock)
    store.flush()
    result = report.build_report(engine)
    assert (result["cards_total"], result["refires_total"]) == (7, 0)


def test_two_orders_in_one_call_are_two_decisions_and_their_refire_joins_them(engine, store, clock):
    start = datetime(2025, 3, 3, 9, 0, tzinfo=timezone.utc)
    first, second = "call-1", "call-2"
    for hook_instance, minute in ((first, 0), (second, 2)):
        for _ in range(2):  # two MRI orders, same rule
            issue(store, on=start + timedelta(minutes=minute), clock=clock, patient="p1", hook_instance=hook_instance)
    store.flush()
    entry = report.build_report(engine)["rules"]["acute-uncomplicated"]
    assert (entry["cards"], entry["refires"]) == (2, 2)


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
    printed = json.loads(answer.output)
    assert {k: printed[k] for k in ("rules", "modalities", "cards_total", "refires_total", "feedback_total")} == report.build_report(engine)
    assert printed["database"] == engine.url.render_as_string(hide_password=True)
    assert (printed["since"], printed["until"], printed["dedup_minutes"]) == (None, None, 10)
    assert printed["generated_at"].endswith("+00:00")

    page = tmp_path / "report.html"
    answer = runner.invoke(cli, ["report", "--since", "2025-03-01", "--until", "2025-03-31", "--html", str(page)],
                           env=env, catch_exceptions=False)
    assert answer.exit_code == 0
    assert "acute-uncomplicated" in answer.output and "from 2025-03-01 to 2025-03-31" in answer.output
    assert "<svg" in page.read_text()

    answer = runner.invoke(cli, ["report", "--json", "--since", "2025-04-01"], env=env, catch_exceptions=False)
    assert json.loads(answer.output)["cards_total"] == 0
    assert runner.invoke(cli, ["report", "--since", "March"], env=env).exit_code == 2


def test_report_refuses_since_after_until(engine):
    from click.testing import CliRunner

    from service.cli import cli

    env = {"LUMBAR_MRI_CDS_CONFIG": "", "LUMBAR_MRI_CDS_DATABASE_URL": engine.url.render_as_string(hide_password=False)}
    answer = CliRunner().invoke(cli, ["report", "--since", "2025-03-10", "--until", "2025-03-01"], env=env)
    assert answer.exit_code == 2
    assert "--since 2025-03-10 is after --until 2025-03-01" in answer.output


def test_report_does_not_create_an_empty_default_database(tmp_path, capsys):
    from service.cli import main

    env_before = dict(__import__("os").environ)
    try:
        __import__("os").environ.update({"XDG_DATA_HOME": str(tmp_path), "LUMBAR_MRI_CDS_CONFIG": ""})
        __import__("os").environ.pop("LUMBAR_MRI_CDS_DATABASE_URL", None)
        with pytest.raises(SystemExit) as exited:
            main(["report"])
    finally:
        __import__("os").environ.clear()
        __import__("os").environ.update(env_before)
    assert exited.value.code == 5
    assert f"no database at {tmp_path / 'lumbar-mri-cds' / 'lumbar-mri-cds.db'}" in capsys.readouterr().err
    assert not (tmp_path / "lumbar-mri-cds").exists()


def test_report_on_a_database_the_service_never_used(tmp_path, capsys):
    from service.cli import main

    import sqlite3

    sqlite3.connect(tmp_path / "other.db").close()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LUMBAR_MRI_CDS_CONFIG", "")
        mp.setenv("LUMBAR_MRI_CDS_DATABASE_URL", f"sqlite:///{tmp_path / 'other.db'}")
        with pytest.raises(SystemExit) as exited:
            main(["report"])
    assert exited.value.code == 5
    assert "has no cards table" in capsys.readouterr().err
