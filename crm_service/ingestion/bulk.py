"""Bulk CSV import of orders and customer profiles.

The file is streamed: rows are checked one at a time by the same rules as REST batches and
written straight into a PostgreSQL COPY, so memory stays flat whatever the file size. The merge
runs in one transaction: an import lands whole or not at all. Rejected rows go to a report with
their line number and reason; they do not stop the import.
"""

from __future__ import annotations

import csv
import io
import json
import os
import queue
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from crm_service.customers import identities
from crm_service.customers.rules import check_customer
from crm_service.errors import ValidationError
from crm_service.ingestion.records import (
    SUPPRESSED,
    SUPPRESSED_ACCOUNT,
    OrderRules,
    check_account,
    iter_checked,
)
from crm_service.platform.config import Settings
from crm_service.privacy import erasure
from crm_service.storage import customers as customer_store
from crm_service.storage import erasure as erasure_store
from crm_service.storage import identities as id_store
from crm_service.storage import orders as order_store
from crm_service.storage.locks import lock_exclusive

if TYPE_CHECKING:
    import psycopg

ORDER_REQUIRED = ("order_id", "ordered_at", "amount")  # and customer_id or buyer_id
ORDER_OPTIONAL = ("customer_id", "buyer_id", "channel", "currency", "status")
CUSTOMER_REQUIRED = ()  # customer_id, or channel and buyer_id
CUSTOMER_OPTIONAL = ("customer_id", "channel", "buyer_id", "email", "phone", "name")
ORDER_HEADER = ("order_id,customer_id,ordered_at,amount and optionally channel,currency,status;"
                " buyer_id (with channel) may replace or accompany customer_id")
CUSTOMER_HEADER = ("customer_id and optionally email,phone,name; channel,buyer_id may replace "
                   "customer_id")

Progress = Callable[[int], None]


@dataclass
class ImportSummary:
    """Counts reported by an import (the ``--json`` output)."""

    inserted: int = 0
    updated: int = 0
    duplicates: int = 0
    rejected: int = 0
    rows: int = 0
    report: str | None = None
    linked: dict[str, int] | None = None  # what the linking rules did (profile imports)

    def as_dict(self) -> dict[str, Any]:
        """The summary as a JSON-ready dict."""
        return {
            "inserted": self.inserted,
            "updated": self.updated,
            "duplicates": self.duplicates,
            "rejected": self.rejected,
            "rows": self.rows,
            "report": self.report,
            **({"linked": self.linked} if self.linked is not None else {}),
        }


class _Rejects:
    """Writes rejected rows to the report file, created on the first reject only."""

    def __init__(self, path: Path, key: str) -> None:
        self.path = path
        self.key = key
        self.count = 0
        self.malformed = 0  # rows rejected for their shape, before any field check
        self._lock = threading.Lock()  # the parser and the feeding thread both reject rows
        self._fh: IO[str] | None = None
        self._writer: Any = None

    @property
    def _partial(self) -> Path:
        return self.path.with_name(self.path.name + ".partial")

    def add(self, line: int, errors: dict[str, str], key: str = "") -> None:
        """Record one rejected row: every failed field on its own report line."""
        with self._lock:
            if self._fh is None:
                self._fh = open(self._partial, "w", encoding="utf-8", newline="")  # noqa: SIM115
                self._writer = csv.writer(self._fh)
                self._writer.writerow(["line", self.key, "field", "reason"])
            for name, reason in errors.items():
                self._writer.writerow([line, key, name, reason])
            self.count += 1

    def close(self, *, committed: bool) -> None:
        """Publish the report if the import committed; otherwise leave no report behind.

        A report from an earlier run of the same file is replaced, or removed when this run
        rejected nothing, so the report on disk always describes the last import.
        """
        if self._fh is not None:
            self._fh.close()
        if committed and self.count:
            os.replace(self._partial, self.path)
            return
        self._partial.unlink(missing_ok=True)
        if committed:
            self.path.unlink(missing_ok=True)


def _open_csv(path: Path) -> IO[bytes]:
    try:
        fh = open(path, "rb")  # noqa: SIM115 - closed by the caller's with-block
    except OSError as exc:
        raise ValidationError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if fh.read(3) != b"\xef\xbb\xbf":  # skip a UTF-8 byte-order mark
        fh.seek(0)
    return fh


def _bad_utf8_message(path: Path) -> str:
    with open(path, "rb") as raw:
        if raw.read(3) != b"\xef\xbb\xbf":
            raw.seek(0)
        for number, line in enumerate(raw, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as exc:
                return (f"{path} is not UTF-8 text: line {number} has an invalid byte at column "
                        f"{exc.start + 1}; save the file as UTF-8")
    return f"{path} is not UTF-8 text"


def _read_header(fh: IO[bytes], path: Path, required: tuple[str, ...],
                 optional: tuple[str, ...], expected: str) -> dict[str, int]:
    """The header's column positions, or a ValidationError naming what is wrong.

    A customer column (``customer_id`` or ``buyer_id``) is required besides ``required``;
    ``expected`` describes a good header.
    """
    try:
        first = fh.readline().decode("utf-8")
    except UnicodeDecodeError:
        raise ValidationError(_bad_utf8_message(path)) from None
    if not first.strip():
        raise ValidationError(f"{path} is empty; expected a header line: {expected}")
    names = [n.strip().lower() for n in next(csv.reader([first]))]
    unknown = [n for n in names if n not in required + optional]
    missing = [n for n in required if n not in names]
    if "customer_id" not in names and "buyer_id" not in names:
        missing.append("customer_id (or buyer_id: the buyer's account on the row's channel)")
    dupes = sorted({n for n in names if names.count(n) > 1})
    problems = []
    if missing:
        problems.append("missing column(s): " + ", ".join(missing))
    if unknown:
        problems.append("unknown column(s): " + ", ".join(unknown))
    if dupes:
        problems.append("repeated column(s): " + ", ".join(dupes))
    if problems:
        raise ValidationError(f"wrong header in {path}: {'; '.join(problems)}. Expected {expected}")
    return {name: i for i, name in enumerate(names)}


def _rows(fh: IO[bytes], width: int, key_index: int, rejects: _Rejects,
          progress: Progress | None, path: Path) -> Iterator[tuple[int, list[str]]]:
    """CSV records as (line number where the record starts, fields).

    Rows of the wrong width go to the report. Progress is reported as bytes read.

    The text layer decodes in large blocks: decoding line by line would be simpler but makes
    the parser hold the GIL in many small steps, which slowed the COPY feeding thread
    threefold; so only after an encoding error is the file rescanned to name the offending
    line. The reader runs straight over it, with no generator in between: every layer per line
    costs the parser, which is the import's critical path.
    """
    text = io.TextIOWrapper(fh, encoding="utf-8", newline="")
    reader = csv.reader(text)
    line = 1
    ended = 1  # physical lines consumed so far, header included
    try:
        for fields in reader:
            line, ended = ended + 1, reader.line_num + 1
            if len(fields) != width:
                if not fields or fields == [""]:
                    continue  # blank line
                key = fields[key_index].strip() if key_index < len(fields) else ""
                rejects.add(line, {"_row": f"expected {width} fields, found {len(fields)}"}, key)
                rejects.malformed += 1
                continue
            yield line, fields
            if progress is not None and line % 50_000 == 0:
                progress(fh.tell())
    except UnicodeDecodeError:
        raise ValidationError(_bad_utf8_message(path)) from None
    except csv.Error as exc:
        raise ValidationError(f"{path}: malformed CSV at line {ended + 1}: {exc}") from exc
    finally:
        text.detach()
    if progress is not None:
        progress(fh.tell())


def _finish(summary: ImportSummary, merged: Any, rejects: _Rejects) -> ImportSummary:
    """Fill the summary from the merge's counts and the reject report."""
    summary.rows += rejects.malformed
    summary.inserted, summary.updated = merged.inserted, merged.updated
    summary.duplicates = merged.duplicates
    summary.rejected = rejects.count
    summary.report = str(rejects.path) if rejects.count else None
    return summary


def default_report_path(path: Path) -> Path:
    """Where rejects of ``path`` are written unless told otherwise: ``FILE.rejects.csv``."""
    return path.with_name(path.name + ".rejects.csv")


def _blocks_in_background(make_blocks: Callable[[], Iterator[Any]]) -> Iterator[Any]:
    """Run the block producer on a thread so parsing overlaps the database's merge work.

    PostgreSQL runs on the other core while psycopg waits with the GIL released, so the merge
    of chunk k and the parsing of chunk k+1 proceed together. Errors are re-raised here.
    """
    q: queue.Queue[Any] = queue.Queue(maxsize=2)
    done = object()
    stop = threading.Event()

    def produce() -> None:
        try:
            for block in make_blocks():
                while not stop.is_set():
                    try:
                        q.put(block, timeout=0.2)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(done)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            q.put(exc)

    worker = threading.Thread(target=produce, name="csv-parser", daemon=True)
    worker.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        worker.join(timeout=5)


def import_orders(
    conn: psycopg.Connection,
    settings: Settings,
    path: Path,
    *,
    channel: str | None = None,
    report_path: Path | None = None,
    progress: Progress | None = None,
    chunk_rows: int = 100_000,
) -> ImportSummary:
    """Import an order CSV in one transaction on ``conn``; see the module docstring."""
    report_path = report_path or default_report_path(path)
    rules = OrderRules.from_settings(settings)
    with _open_csv(path) as fh:
        columns = _read_header(fh, path, ORDER_REQUIRED, ORDER_OPTIONAL, ORDER_HEADER)
        if "channel" not in columns and not channel:
            raise ValidationError(
                f"{path} has no channel column; pass --channel (e.g. --channel tmall)"
            )
        rejects = _Rejects(report_path, "order_id")
        summary = ImportSummary()
        erased = _Erased(settings)
        by_account = "buyer_id" in columns
        make_id = identities.IdMaker(identities.identity_key(settings)) if by_account else None
        aliases: dict[str, str] = {}

        def blocks() -> Iterator[order_store.OrderBlock]:
            # The parser is the import's critical path (PostgreSQL has the other core), so it
            # does little per row: one string per order, kept in file order (sorting and COPY
            # formatting happen on the feeding thread), and each customer id sent only the
            # first time this import sees it. That set costs the parser ~1.5 s per million
            # customers of a time-ordered file (its lookups miss the CPU cache), but probing
            # every repeat in PostgreSQL cost three times as much.
            #
            # An order sent by buyer id gets the account's generated customer id (a keyed hash,
            # no lookup); the account is sent along the first time, and the feeding thread
            # re-points the few whose account belongs to another customer already.
            rows = _rows(fh, len(columns), columns["order_id"], rejects, progress, path)
            lines: list[str] = []
            seen: set[str] = set()
            fresh: list[str] = []
            accounts: list[str] = []
            claims: list[tuple[str, str, str, str, int, int]] = []
            first_sent = True  # no customer id was sent twice so far
            # A small first chunk gets the database working sooner.
            limit = max(1, chunk_rows // 4)
            suppressed = erased.blocks if erased else None
            count = 0
            for line, row, errors, raw_id, buyer in iter_checked(rules, rows, columns, channel):
                count += 1
                if row is None:
                    rejects.add(line, errors, raw_id.strip())
                    continue
                cid = row[1]
                claim = None
                if buyer is not None and make_id is not None:
                    generated = make_id(row[2], buyer)
                    if not cid:
                        cid = generated
                    else:
                        cid = aliases.get(cid, cid)
                        claim = (row[2], buyer, cid, generated, line, len(lines))
                elif aliases:
                    cid = aliases.get(cid, cid)
                if suppressed is not None:  # someone was erased: check the id and account
                    if suppressed(cid):
                        rejects.add(line, {"customer_id": SUPPRESSED}, raw_id.strip())
                        continue
                    if buyer is not None and erased.blocks_account(row[2], buyer):
                        rejects.add(line, {"buyer_id": SUPPRESSED_ACCOUNT}, raw_id.strip())
                        continue
                if claim is not None:
                    claims.append(claim)
                elif buyer is not None and cid not in seen:
                    accounts.append(order_store.account_line(row[2], buyer, cid))
                lines.append(order_store.bulk_line(row) if cid is row[1]
                             else order_store.bulk_line_of(row, cid))
                if cid not in seen:
                    seen.add(cid)
                    fresh.append(cid)
                if len(lines) >= limit:
                    summary.rows += count
                    count = 0
                    yield order_store.OrderBlock(lines, fresh, first_sent, accounts, claims)
                    lines, fresh, accounts, claims = [], [], [], []
                    limit = chunk_rows
                    if len(seen) > 5_000_000:  # bound memory; later blocks may repeat ids
                        seen.clear()
                        first_sent = False
            summary.rows += count
            if lines:
                yield order_store.OrderBlock(lines, fresh, first_sent, accounts, claims)

        def reject_claim(line: int, order_id: str, reason: str) -> None:
            rejects.add(line, {"buyer_id": reason}, order_id)

        # The parser thread and this one (feeding COPY) take turns on the GIL; with the default
        # 5 ms switch interval each small socket write can wait that long for its turn, which
        # made COPY twice as slow. A shorter interval for the import's duration fixes it.
        interval = sys.getswitchinterval()
        sys.setswitchinterval(0.0005)
        committed = False
        try:
            with conn.transaction():
                # Under the writers' lock, so an erasure is committed before or waits.
                lock_exclusive(conn)
                erased.load(conn)
                aliases.update(id_store.all_aliases(conn))
                merged = order_store.merge_order_blocks(conn, _blocks_in_background(blocks),
                                                        reject_claim=reject_claim)
            committed = True
        finally:
            sys.setswitchinterval(interval)
            rejects.close(committed=committed)
    return _finish(summary, merged, rejects)


def import_customers(
    conn: psycopg.Connection,
    settings: Settings,
    path: Path,
    *,
    report_path: Path | None = None,
    progress: Progress | None = None,
) -> ImportSummary:
    """Import a customer-profile CSV in one transaction; empty cells leave a field unchanged.

    A row may name its customer by ``channel`` + ``buyer_id`` instead of ``customer_id``: a
    known account gives its customer, a new one its generated id (the account is linked). The
    file is then read twice: once for the accounts (looked up in one statement), once to load.
    The linking rules run over the imported customers before the import commits.
    """
    report_path = report_path or default_report_path(path)
    with _open_csv(path) as fh:
        columns = _read_header(fh, path, CUSTOMER_REQUIRED, CUSTOMER_OPTIONAL, CUSTOMER_HEADER)
        by_account = "buyer_id" in columns
        if by_account and "channel" not in columns:
            raise ValidationError(f"{path} has a buyer_id column but no channel column: an "
                                  "account is a buyer id on one channel")
        start = fh.tell()
        key_index = columns.get("customer_id", columns.get("buyer_id", 0))
        rejects = _Rejects(report_path, "customer_id")
        summary = ImportSummary()
        owners: dict[tuple[str, str], str] = {}
        links: list[tuple[str, str, str]] = []
        aliases: dict[str, str] = {}
        touched: list[str] = []
        make_id = identities.IdMaker(identities.identity_key(settings)) if by_account else None

        def accounts() -> Iterator[tuple[str, str]]:
            quiet = _Rejects(report_path.with_name(report_path.name + ".scan"), "customer_id")
            try:
                for _, fields in _rows(fh, len(columns), key_index, quiet, None, path):
                    account, _ = check_account(fields[columns["channel"]],
                                               fields[columns["buyer_id"]])
                    if account is not None:
                        yield account
            finally:
                quiet.close(committed=False)

        def staged() -> Iterator[customer_store.StagedCustomer]:
            for line, fields in _rows(fh, len(columns), key_index, rejects, progress, path):
                summary.rows += 1
                record = {
                    name: fields[i] for name, i in columns.items() if fields[i].strip() != ""
                }
                chan, buyer = record.pop("channel", None), record.pop("buyer_id", None)
                account = None
                if by_account and buyer is not None and make_id is not None:
                    account, errors = check_account(chan, buyer)
                    if account is None:
                        rejects.add(line, errors, (buyer or "").strip())
                        continue
                    if account not in owners and erased and erased.blocks_account(*account):
                        rejects.add(line, {"buyer_id": SUPPRESSED_ACCOUNT}, account[1])
                        continue
                    if not record.get("customer_id"):
                        record["customer_id"] = owners.get(account) or make_id(*account)
                record.setdefault("customer_id", "")
                profile, errors = check_customer(record, settings.phone_country_code)
                if profile is None:
                    rejects.add(line, errors, record.get("customer_id", "").strip())
                    continue
                profile.customer_id = aliases.get(profile.customer_id, profile.customer_id)
                if erased and erased.blocks(profile.customer_id):
                    rejects.add(line, {"customer_id": SUPPRESSED}, profile.customer_id)
                    continue
                if account is not None:
                    owner = owners.get(account)
                    if owner is not None and owner != profile.customer_id:
                        # Sent with both ids, and the account is someone else's.
                        rejects.add(line, {"buyer_id": f"{account[0]} account {account[1]!r}"
                                           " belongs to another customer"}, profile.customer_id)
                        continue
                    if owner is None:
                        links.append((*account, profile.customer_id))
                        owners[account] = profile.customer_id
                touched.append(profile.customer_id)
                yield line, profile

        committed = False
        erased = _Erased(settings)
        try:
            with conn.transaction():
                customer_store.lock_writers(conn)
                erased.load(conn)
                aliases.update(id_store.all_aliases(conn))
                if by_account:
                    owners.update(id_store.account_owners(conn, accounts()))
                    fh.seek(start)
                merged = customer_store.merge_customers(conn, staged())
                customer_store.add_identities(conn, links)
                linked = identities.link(conn, settings,
                                         among=None if len(touched) > 50_000 else touched)
            committed = True
        finally:
            rejects.close(committed=committed)
    summary.linked = linked.as_dict()
    return _finish(summary, merged, rejects)


class _Erased:
    """The suppression list, loaded under the writers' lock; empty in the common case."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.hashes: set[bytes] = set()
        self.verdicts: dict[str, bool] = {}

    def load(self, conn: psycopg.Connection) -> None:
        self.hashes = erasure_store.erased_digests(conn)
        if self.hashes:
            from crm_service.platform import secretbox

            self.key = secretbox.server_key(self.settings)

    def __bool__(self) -> bool:
        return bool(self.hashes)

    def blocks_account(self, channel: str, external_id: str) -> bool:
        """Whether the channel account belonged to an erased customer."""
        key = f"\x00{channel}/{external_id}"  # cannot be a customer id (no control characters)
        verdict = self.verdicts.get(key)
        if verdict is None:
            digest = erasure.account_digest(self.key, channel, external_id)
            verdict = self.verdicts[key] = digest in self.hashes
        return verdict

    def blocks(self, customer_id: str) -> bool:
        verdict = self.verdicts.get(customer_id)
        if verdict is None:
            from crm_service.platform import secretbox

            digest = secretbox.keyed_digest(self.key, erasure.PURPOSE, customer_id)
            verdict = self.verdicts[customer_id] = digest in self.hashes
            if len(self.verdicts) > 2_000_000:
                self.verdicts.clear()
        return verdict


def file_size(path: Path) -> int:
    """Size of ``path`` in bytes, 0 when unknown (for progress bars)."""
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def summary_json(summary: ImportSummary) -> str:
    """The ``--json`` line printed by the CLI."""
    return json.dumps(summary.as_dict(), sort_keys=True)
