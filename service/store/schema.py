"""The database: engine creation and the schema, SQLite by default, PostgreSQL by URL.

Every table of the service is declared on ``metadata`` (feedback and cards in store/, the seen-`jti`
table in security/replay.py) and created at start-up by ``create_schema``. ``schema_version`` records
the version so later changes can migrate.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects import sqlite

from service.errors import ConfigError
from service.errors import StoreUnavailable

# 1: the first tables. 2 (issue 13): cards.modality, the modality of the order a card is about.
SCHEMA_VERSION = 2

metadata = sa.MetaData()

schema_version = sa.Table(
    "schema_version",
    metadata,
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("applied_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
)

# Every card the service issued (store/card_store.py): what feedback is checked against and what the
# report counts. No patient identifier or clinical data: at most a salted SHA-256 of the patient id.
# Times are UTC (SQLite keeps them as naive UTC text).
cards = sa.Table(
    "cards",
    metadata,
    sa.Column("card_uuid", sa.String(64), primary_key=True),
    sa.Column("service_id", sa.String(64), nullable=False),
    sa.Column("rule_id", sa.String(128), nullable=False),    # = source.topic.code
    sa.Column("indicator", sa.String(16), nullable=False),
    sa.Column("rating", sa.String(64), nullable=True),       # appropriateness rating, if any
    # Text, not String(n): these come from the EHR (request, token), and a value longer than a
    # VARCHAR bound would make PostgreSQL refuse the whole batch of the card writer.
    sa.Column("hook_instance", sa.Text, nullable=False),
    sa.Column("issuer", sa.Text, nullable=False),            # JWT `iss` of the call
    sa.Column("tenant", sa.Text, nullable=True),             # JWT `tenant`, if any
    sa.Column("patient_hash", sa.String(64), nullable=True),  # HMAC-SHA256(salt, patient id), hex
    sa.Column("issued_at", sa.DateTime(timezone=True), nullable=False),
    # Schema 2: mri | ct | xr. Nullable, and added to an older database at start-up (``_migrate``):
    # its cards were all about MRI orders, the only ones reviewed before schema 2.
    sa.Column("modality", sa.String(16), nullable=True),
    sa.Index("ix_cards_issued_at", "issued_at"),
)

card_suggestions = sa.Table(
    "card_suggestions",
    metadata,
    sa.Column("card_uuid", sa.String(64), sa.ForeignKey("cards.card_uuid"), primary_key=True),
    sa.Column("suggestion_uuid", sa.String(64), primary_key=True),
)

# Feedback items as received (CDS Hooks 2.0 feedback endpoint). `dedup_key` is a SHA-256 of the
# normalized item, so a client that repeats the same feedback (a retry) stores it once.
feedback = sa.Table(
    "feedback",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("card_uuid", sa.String(64), sa.ForeignKey("cards.card_uuid"), nullable=False, index=True),
    sa.Column("service_id", sa.String(64), nullable=False),
    sa.Column("outcome", sa.String(16), nullable=False),     # accepted | overridden
    sa.Column("accepted_suggestions", sa.Text, nullable=False),  # JSON array of suggestion uuids
    sa.Column("override_code", sa.String(256), nullable=True),
    sa.Column("override_system", sa.String(1024), nullable=True),
    sa.Column("override_display", sa.String(1024), nullable=True),
    sa.Column("user_comment", sa.String(2000), nullable=True),   # free text: never logged
    sa.Column("outcome_timestamp", sa.DateTime(timezone=True), nullable=False),
    sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("dedup_key", sa.String(64), nullable=False, unique=True),
)


# A sick database must cost a call about a second, not the call's whole deadline (issue 15): every
# connection of the service gets these bounds. The report command runs long queries: it passes
# interactive=False and gets no statement timeout.
LOCK_TIMEOUT_MS = 1000          # SQLite busy timeout; PostgreSQL lock_timeout
STATEMENT_TIMEOUT_MS = 1000     # PostgreSQL statement_timeout
CONNECT_TIMEOUT_SECONDS = 2     # PostgreSQL connect_timeout (libpq's minimum is 2 s)
POOL_TIMEOUT_SECONDS = 1.0      # waiting for a pooled connection
# PostgreSQL ends a session left idle inside a transaction this long: a worker killed, or its host
# gone, mid-write leaves no open transaction holding row locks that the outbox's retries (another
# worker writing the same cards) would wait on. Our transactions never pause for a second.
IDLE_IN_TRANSACTION_MS = 5000
# Connections per engine: the 16 request threads of a worker (server.DEFAULT_THREADS) and the card
# writer's own connection fit; a wait past POOL_TIMEOUT_SECONDS is retried like a lock wait (is_busy).
_POOL = {"pool_size": 4, "max_overflow": 16, "pool_timeout": POOL_TIMEOUT_SECONDS}
# TCP keepalive, and a bound on unacknowledged data: a database host that vanished from the network
# is noticed within seconds instead of the kernel's 2 hours (idle) or 15 minutes (in flight).
_PG_KEEPALIVE = {"keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2, "keepalives_count": 2,
                 "tcp_user_timeout": 5000}


def create_engine(database_url: str, *, power_safe: bool = True, interactive: bool = True) -> sa.Engine:
    """An engine for this URL, with the timeouts above; SQLite gets WAL so several workers can share it.

    ``power_safe=False`` (the replay cache only) commits without waiting for the disk: a commit
    survives a crash of the process, not a power loss (SQLite synchronous=NORMAL in WAL mode,
    PostgreSQL synchronous_commit=off). ``interactive=False`` (reports) drops the statement timeout.
    """
    # hide_parameters: SQLAlchemy's error messages would otherwise quote the bound values (feedback
    # comments, patient hashes, token ids) into logs and tracebacks.
    url = database_url
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://"):]  # psycopg 3, not psycopg2
    try:
        if url.startswith("sqlite"):
            # A file gets the bounded pool PostgreSQL gets (SQLAlchemy's default would wait 30 s for
            # a connection); an in-memory database keeps its one connection per thread.
            pool = {} if sa.make_url(url).database in (None, "", ":memory:") else _POOL
            engine = sa.create_engine(url, connect_args={"timeout": LOCK_TIMEOUT_MS / 1000}, hide_parameters=True,
                                      **pool)
            sa.event.listen(engine, "connect", _sqlite_pragmas if power_safe else _sqlite_pragmas_fast)
            return engine
        parsed = sa.make_url(url)
        options = f"-c lock_timeout={LOCK_TIMEOUT_MS} -c idle_in_transaction_session_timeout={IDLE_IN_TRANSACTION_MS}"
        if interactive:
            options += f" -c statement_timeout={STATEMENT_TIMEOUT_MS}"
        # connect_args replace the URL's own `options` (e.g. a search_path): merged, theirs last. The
        # URL keeps them, so engine.url still names the same database (the replay cache's engine).
        given = parsed.query.get("options")
        if given:
            options += " " + (given if isinstance(given, str) else " ".join(given))
        engine = sa.create_engine(
            parsed, pool_pre_ping=True, **_POOL, hide_parameters=True,
            connect_args={"connect_timeout": CONNECT_TIMEOUT_SECONDS, **_PG_KEEPALIVE, "options": options},
        )
        if not power_safe:
            sa.event.listen(engine, "connect", _postgresql_fast)
        return engine
    except (sa.exc.ArgumentError, ImportError, ValueError) as exc:
        raise ConfigError(f"database_url is not usable: {exc}") from None


def may_hang(url: sa.URL) -> bool:
    """Whether a call to this database can wait without end, so its callers bound the wait
    (store/bounded.py): a server can, on a connection it keeps open and never answers. SQLite's
    waits are its lock waits, which the busy timeout bounds; its calls stay on the caller's thread
    (a hand-over costs about 0.1 ms of CPU, and in-memory SQLite is one database per thread)."""
    return url.get_backend_name() != "sqlite"


def is_busy(exc: sa.exc.SQLAlchemyError) -> bool:
    """Whether a database error is a wait that ran out on a busy database: no pooled connection came
    free within POOL_TIMEOUT_SECONDS, or a lock wait ran out (SQLite busy, PostgreSQL lock_timeout)."""
    if isinstance(exc, sa.exc.TimeoutError):
        return True
    if not isinstance(exc, sa.exc.DBAPIError):
        return False
    text = str(exc.orig).lower()
    return "database is locked" in text or "lock timeout" in text or getattr(exc.orig, "sqlstate", None) == "55P03"


def open_existing(database_url: str) -> sa.Engine:
    """An engine on a store that exists and holds the service's tables; StoreUnavailable, saying
    where, otherwise (a report must not create an empty database and then describe it)."""
    url = sa.engine.make_url(database_url) if "://" in database_url else None
    if url is not None and url.get_backend_name() == "sqlite" and url.database and not Path(url.database).is_file():
        raise StoreUnavailable(
            f"no database at {url.database}: nothing was recorded there (start `lumbar-mri-cds serve` and "
            "call it, or name the store with --config or LUMBAR_MRI_CDS_DATABASE_URL)"
        )
    engine = create_engine(database_url, interactive=False)  # reports: no statement timeout
    try:
        present = sa.inspect(engine).has_table(cards.name)
    except sa.exc.SQLAlchemyError as exc:
        engine.dispose()
        raise unreachable(database_url, exc) from None
    if not present:
        engine.dispose()
        raise StoreUnavailable(f"the database {masked_url(database_url)} has no cards table: no service has recorded there")
    return engine


def masked_url(database_url: str) -> str:
    """A database (or Redis) URL with its password replaced by ***, for messages and check-config."""
    try:
        return sa.engine.make_url(database_url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return "(not a valid database URL)"


def unreachable(database_url: str, exc: sa.exc.SQLAlchemyError) -> StoreUnavailable:
    """A short StoreUnavailable for a database that cannot be used: which one, and the driver's first
    line (never a traceback; driver messages name host and port, never the password)."""
    reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
    return StoreUnavailable(f"the database {masked_url(database_url)} cannot be used: {reason}")


def _postgresql_fast(dbapi_connection: Any, _record: Any) -> None:
    autocommit = dbapi_connection.autocommit
    dbapi_connection.autocommit = True
    dbapi_connection.execute("SET synchronous_commit = off")  # the session's commits skip the WAL flush wait
    dbapi_connection.autocommit = autocommit


def _sqlite_pragmas_fast(dbapi_connection: Any, record: Any) -> None:
    _sqlite_pragmas(dbapi_connection, record)
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA synchronous=NORMAL")  # WAL: durable across process crashes, not power loss
    cursor.close()


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")    # readers never block the writer
    cursor.execute("PRAGMA synchronous=FULL")    # a 200 means committed, even on power loss
    cursor.execute(f"PRAGMA busy_timeout={LOCK_TIMEOUT_MS}")  # wait for another worker's write, briefly
    cursor.close()


_SCHEMA_LOCK_KEY = 0x6C6D6364  # "lmcd": any constant shared by every worker of this service


def create_schema(engine: sa.Engine, tables: tuple[sa.Table, ...] | None = None) -> None:
    """Create missing tables (all, or these) and record the schema version (idempotent, safe across
    workers)."""
    if engine.url.get_backend_name() == "sqlite" and engine.url.database not in (None, "", ":memory:"):
        Path(engine.url.database).parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(SCHEMA_ATTEMPTS):
        try:
            _create_schema_once(engine, tables)
            return
        except (sa.exc.OperationalError, sa.exc.ProgrammingError, sa.exc.IntegrityError):
            # Several workers starting at once: another one created a table (or the version row)
            # between our existence check and our CREATE, or holds the lock longer than the lock
            # timeout. Its work is committed soon; check again.
            if attempt == SCHEMA_ATTEMPTS - 1:
                raise


SCHEMA_ATTEMPTS = 10


def _create_schema_once(engine: sa.Engine, tables: tuple[sa.Table, ...] | None) -> None:
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            # PostgreSQL DDL is transactional: this lock makes concurrent starts run one after the
            # other, so the second sees the first one's tables (released at commit).
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SCHEMA_LOCK_KEY})
        elif conn.dialect.name == "sqlite":
            # The same for SQLite: take the write lock first (waits for busy_timeout), so checking
            # and creating happen in one transaction; Python's sqlite3 would not begin one for DDL.
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        metadata.create_all(conn, tables=None if tables is None else [schema_version, *tables], checkfirst=True)
        if tables is None or cards in tables:
            _migrate(conn)
        present = conn.execute(sa.select(schema_version.c.version)).scalars().all()
        if SCHEMA_VERSION not in present:
            conn.execute(sa.insert(schema_version).values(version=SCHEMA_VERSION))


# Columns added after schema 1, with the value their older rows get: (table, column, backfill).
ADDED_COLUMNS: tuple[tuple[sa.Table, str, str | None], ...] = ((cards, "modality", "mri"),)


def _migrate(conn: sa.Connection) -> None:
    """Bring tables created by an older version up to this schema: add the columns they lack (nullable)
    and fill them for the rows already there. Idempotent; runs under the schema lock."""
    inspector = sa.inspect(conn)
    for table, name, backfill in ADDED_COLUMNS:
        if name in {c["name"] for c in inspector.get_columns(table.name)}:
            continue
        column = table.c[name]
        kind = column.type.compile(dialect=conn.dialect)
        conn.exec_driver_sql(f"ALTER TABLE {table.name} ADD COLUMN {name} {kind}")
        if backfill is not None:
            conn.execute(sa.update(table).where(column.is_(None)).values({name: backfill}))


def insert_ignore(conn: sa.Connection, table: sa.Table) -> Any:
    """INSERT … ON CONFLICT DO NOTHING in the connection's dialect."""
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing()
    if conn.dialect.name == "sqlite":
        return sqlite.insert(table).on_conflict_do_nothing()
    raise StoreUnavailable(f"unsupported database: {conn.dialect.name}")
