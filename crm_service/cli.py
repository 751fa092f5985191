"""The ``crm-service`` command line (also ``python -m crm_service``)."""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import date, datetime
from functools import wraps
from pathlib import Path
from typing import Any

import click

from crm_service import __version__
from crm_service.access import api_keys
from crm_service.errors import ConfigError, CrmError, ValidationError
from crm_service.ingestion import bulk as bulk_import
from crm_service.platform import schema
from crm_service.platform.config import (
    MAX_CHURN_HORIZON,
    MIN_CHURN_HORIZON,
    Settings,
    load_settings,
)
from crm_service.platform.db import DatabaseError, connect, describe_dsn, redact, resolve_dsn
from crm_service.scoring.dates import StaleScoringDateError
from crm_service.storage import policies, runs
from crm_service.vocabulary import CHURN_RISKS, SCOPES
from models.purchase import PURCHASE_MODELS


def _fail(message: str, code: int = 1) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def handles_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn service errors into one clear line on stderr and a non-zero exit."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ConfigError as exc:
            _fail(exc.detail, 2)
        except StaleScoringDateError as exc:  # a usage error: refused before any work
            _fail(exc.detail, 2)
        except CrmError as exc:
            _fail(exc.detail, 1)
        except DatabaseError as exc:
            # Nothing was committed: every command writes in one transaction.
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            _fail(f"database error, nothing was changed: {first}", 1)

    return wrapper


class NoDatabaseError(ConfigError):
    """No database to use: no ``DATABASE_URL`` and no embedded database created yet."""

    title = "No database"


class Context:
    """Settings and the DSN, resolved lazily (the embedded server starts on first use).

    The database rule (README, "Which database a command uses"): ``DATABASE_URL`` if set;
    else the embedded PostgreSQL in ``CRM_DATA_DIR``, else in one per-user folder, never one
    that depends on the current directory. Only ``demo``, ``serve`` and ``db upgrade`` may
    create the embedded database; every other command refuses (exit 2) when there is none.
    Whichever is used is named on stderr, once, without secrets.
    """

    def __init__(self) -> None:
        self._settings: Settings | None = None
        self._dsn: str | None = None

    @property
    def settings(self) -> Settings:
        """Validated settings from the environment."""
        if self._settings is None:
            self._settings = load_settings()
        return self._settings

    @property
    def dsn(self) -> str:
        """The DSN of an existing database; starts the embedded server when needed."""
        return self.open_database(create=False)

    def open_database(self, *, create: bool) -> str:
        """The DSN in use, creating the embedded database only when ``create``."""
        if self._dsn is None:
            s = self.settings
            if s.embedded and not embedded_exists(s.data_dir):
                if create:
                    _refuse_to_shadow_local_data_dir(s)
                    return self._resolve(s)
                where = (f"CRM_DATA_DIR={s.data_dir}" if s.data_dir_source == "CRM_DATA_DIR"
                         else f"{s.data_dir} (the per-user default; no CRM_DATA_DIR or "
                              "DATABASE_URL is set)")
                raise NoDatabaseError(
                    f"no database: there is no embedded PostgreSQL in {where}. Create one with "
                    "`crm-service db upgrade` (or `crm-service demo`), or point this command at "
                    "the one you use with DATABASE_URL or CRM_DATA_DIR; nothing was written")
            return self._resolve(s)
        return self._dsn

    def _resolve(self, s: Settings) -> str:
        """Start or reach the database, and name it on stderr."""
        self._dsn = resolve_dsn(s)
        if not os.environ.get(SERVE_CHILD):  # serve named it already
            click.echo(f"database: {describe_database(s, self._dsn)}", err=True)
        _warn_about_local_data_dir(s)
        return self._dsn

    def upgraded_dsn(self, *, create: bool = False) -> str:
        """The DSN, after applying any pending migration."""
        dsn = self.open_database(create=create)
        schema.upgrade(dsn)
        _normalize_phones(self.settings, dsn)
        return dsn


def _normalize_phones(settings: Settings, dsn: str) -> int | None:
    """Stored phones in E.164 under the configured country code (see identities)."""
    from crm_service.customers import identities
    from crm_service.platform.db import connect

    with connect(dsn, settings) as conn:
        return identities.ensure_phone_scheme(conn, settings)


def embedded_exists(data_dir: Path) -> bool:
    """Whether an embedded PostgreSQL cluster was created in ``data_dir``."""
    return (data_dir / "pg" / "PG_VERSION").is_file()


def describe_database(settings: Settings, dsn: str) -> str:
    """One line naming the database in use, without secrets."""
    if settings.embedded:
        how = ("CRM_DATA_DIR" if settings.data_dir_source == "CRM_DATA_DIR"
               else "the per-user default; set CRM_DATA_DIR or DATABASE_URL for another")
        return f"embedded PostgreSQL in {settings.data_dir} ({how})"
    return f"{describe_dsn(dsn)} (DATABASE_URL)"


# Set in the environment of the processes `serve` starts (they get the embedded database as
# DATABASE_URL; `serve` has named it already).
SERVE_CHILD = "CRM_SERVE_CHILD"


def _local_data_dir(settings: Settings) -> Path | None:
    """``./.crm-data`` when it holds a database an earlier version made and it is not in use."""
    old = Path(".crm-data").resolve()
    if settings.embedded and settings.data_dir_source == "default" \
            and old != settings.data_dir and embedded_exists(old):
        return old
    return None


def _refuse_to_shadow_local_data_dir(settings: Settings) -> None:
    """Do not create an empty per-user database beside the one an earlier version used here."""
    old = _local_data_dir(settings)
    if old is not None:
        raise NoDatabaseError(
            f"{old} holds the embedded database an earlier version made (it used ./.crm-data of "
            f"the current folder); this version uses {settings.data_dir}, where there is none "
            f"yet. To keep your data, set CRM_DATA_DIR={old} (or move that folder to "
            f"{settings.data_dir}); to start afresh, set CRM_DATA_DIR={settings.data_dir}. "
            "Nothing was created")


def _warn_about_local_data_dir(settings: Settings) -> None:
    """Point at a database an earlier version made in ./.crm-data, which is no longer used."""
    old = _local_data_dir(settings)
    if old is not None:
        click.echo(f"note: {old} holds an embedded database made by an earlier version (which "
                   "used ./.crm-data of the current folder); to keep using it, set "
                   f"CRM_DATA_DIR={old}", err=True)


pass_ctx = click.make_pass_decorator(Context, ensure=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="crm-service")
def main() -> None:
    """Customer lifecycle and CRM segmentation service."""
    from crm_service.platform import logs

    # Commands print their results; logs (stderr) show warnings unless CRM_LOG_LEVEL says
    # otherwise. The long-running worker logs at CRM_LOG_LEVEL (default INFO).
    logs.configure((os.environ.get("CRM_LOG_LEVEL") or "WARNING").strip().upper())


# --- db --------------------------------------------------------------------------------------


@main.group()
def db() -> None:
    """Database schema and connection."""


@db.command("upgrade")
@pass_ctx
@handles_errors
def db_upgrade(ctx: Context) -> None:
    """Apply pending migrations (idempotent; safe from two processes at once)."""
    dsn = ctx.open_database(create=True)
    applied = schema.upgrade(dsn)
    changed = _normalize_phones(ctx.settings, dsn)
    if changed:
        click.echo(f"rewrote {changed} stored phone number(s) in E.164")
    click.echo(f"applied {len(applied)} migration(s)" + (": " + ", ".join(applied)
                                                          if applied else "; schema up to date"))


@db.command("url")
@click.option("--redact-password", is_flag=True, help="Hide the password.")
@pass_ctx
@handles_errors
def db_url(ctx: Context, redact_password: bool) -> None:
    """Print the DSN in use (embedded or DATABASE_URL).

    The embedded server runs only while a crm-service process (serve, demo, db psql) holds it.
    """
    click.echo(redact(ctx.dsn) if redact_password else ctx.dsn)


@db.command("psql", context_settings={"ignore_unknown_options": True})
@click.argument("psql_args", nargs=-1, type=click.UNPROCESSED)
@pass_ctx
@handles_errors
def db_psql(ctx: Context, psql_args: tuple[str, ...]) -> None:
    """Open psql on the database in use; the embedded server stays up while it runs."""
    from crm_service.platform.embedded import psql_executable

    exe = shutil.which("psql") or psql_executable()
    if exe is None:
        raise ValidationError("psql is not installed; install the PostgreSQL client")
    sys.exit(subprocess.call([exe, ctx.dsn, *psql_args]))  # noqa: S603 - argv, no shell


# --- keys ------------------------------------------------------------------------------------


@main.group()
def keys() -> None:
    """API keys."""


@keys.command("create")
@click.option("--name", required=True, help="Who or what the key is for.")
@click.option("--scopes", required=True,
              help="Comma-separated: " + ", ".join(SCOPES))
@click.option("--json", "as_json", is_flag=True, help='Print {"id": ..., "key": ...}.')
@pass_ctx
@handles_errors
def keys_create(ctx: Context, name: str, scopes: str, as_json: bool) -> None:
    """Mint an API key; it is printed once and stored only as a hash."""
    try:
        wanted = api_keys.parse_scopes(scopes)
    except ValidationError as exc:
        raise click.BadParameter(exc.detail, param_hint="--scopes") from None
    with connect(ctx.upgraded_dsn(), ctx.settings) as conn:
        key, token = api_keys.create_key(conn, name, wanted)
        conn.commit()
    if as_json:
        click.echo(json.dumps({"id": key.id, "key": token, "name": key.name,
                               "scopes": key.scopes}))
    else:
        click.echo(f"created key {key.id} ({key.name}) with scopes {','.join(key.scopes)}")
        click.echo(f"key: {token}")
        click.echo("store it now: it cannot be shown again", err=True)


@keys.command("list")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
@handles_errors
def keys_list(ctx: Context, as_json: bool) -> None:
    """List keys (never their secrets)."""
    with connect(ctx.upgraded_dsn(), ctx.settings) as conn:
        rows = api_keys.list_keys(conn)
    if as_json:
        click.echo(json.dumps([{
            "id": k.id, "name": k.name, "scopes": k.scopes,
            "created_at": k.created_at.isoformat(),
            "revoked_at": k.revoked_at.isoformat() if k.revoked_at else None,
        } for k in rows]))
        return
    click.echo(f"{'ID':<12}  {'NAME':<24} {'SCOPES':<40} STATE")
    for k in rows:
        state = f"revoked {k.revoked_at:%Y-%m-%d %H:%M}" if k.revoked_at else "active"
        click.echo(f"{k.id:<12}  {k.name:<24} {','.join(k.scopes):<40} {state}")


@keys.command("server-key")
def keys_server_key() -> None:
    """Print a new random server key for CRM_SECRET_KEY (encrypts webhook secrets)."""
    from crm_service.platform.secretbox import new_key_text

    click.echo(new_key_text())


@keys.command("revoke")
@click.argument("key_id")
@pass_ctx
@handles_errors
def keys_revoke(ctx: Context, key_id: str) -> None:
    """Revoke a key by id; requests with it get 401 from then on."""
    with connect(ctx.upgraded_dsn(), ctx.settings) as conn:
        before = {k.id: k for k in api_keys.list_keys(conn)}.get(key_id)
        key = api_keys.revoke_key(conn, key_id)
        conn.commit()
    if before is not None and before.revoked_at is not None:
        click.echo(f"key {key.id} ({key.name}) was already revoked at "
                   f"{before.revoked_at:%Y-%m-%d %H:%M}")
    else:
        click.echo(f"revoked key {key.id} ({key.name})")


# --- tier policy -----------------------------------------------------------------------------


@main.group("tier-policy")
def tier_policy() -> None:
    """Show or replace the tier policy (versioned; each run records the version it used)."""


@tier_policy.command("show")
@pass_ctx
@handles_errors
def tier_policy_show(ctx: Context) -> None:
    """Print the policy in force as JSON (a valid file for `tier-policy set`)."""
    with connect(ctx.upgraded_dsn(), ctx.settings) as conn:
        version, policy = policies.current_tier_policy(conn)
        conn.commit()
    click.echo(json.dumps({"version": version, **policy}, indent=2, sort_keys=True))


@tier_policy.command("set")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@pass_ctx
@handles_errors
def tier_policy_set(ctx: Context, file: Path) -> None:
    """Replace the policy from a JSON file; fields left out take their defaults."""
    from crm_service.scoring.tier_policy import validate_policy

    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValidationError(f"{file}: not a JSON file: {exc}") from None
    policy = validate_policy(data, str(file))
    with connect(ctx.upgraded_dsn(), ctx.settings) as conn:
        version = policies.set_tier_policy(conn, policy, f"cli {file.name}")
    click.echo(f"tier policy version {version} stored; the next scoring run uses it")


# --- import ----------------------------------------------------------------------------------


@main.group("import")
def import_() -> None:
    """Bulk-load CSV files."""


def _progress(path: Path, quiet: bool):
    if quiet or not sys.stderr.isatty():
        return None, None
    bar = click.progressbar(length=bulk_import.file_size(path) or 1, label=f"importing {path.name}",
                            file=sys.stderr)
    state = {"done": 0}

    def update(consumed: int) -> None:
        bar.update(consumed - state["done"])
        state["done"] = consumed

    return bar, update


def _report(summary: bulk_import.ImportSummary, as_json: bool) -> None:
    if as_json:
        click.echo(bulk_import.summary_json(summary))
        return
    click.echo(f"{summary.rows} rows: {summary.inserted} inserted, {summary.updated} updated, "
               f"{summary.duplicates} unchanged, {summary.rejected} rejected")
    if summary.report:
        click.echo(f"rejected rows with line numbers and reasons: {summary.report}")


@import_.command("orders")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--channel", help="Channel for rows without a channel column/value.")
@click.option("--report", type=click.Path(path_type=Path),
              help="Where to write rejected rows (default FILE.rejects.csv).")
@click.option("--json", "as_json", is_flag=True, help="Print the counts as JSON.")
@pass_ctx
@handles_errors
def import_orders(ctx: Context, file: Path, channel: str | None, report: Path | None,
                  as_json: bool) -> None:
    """Import orders: header order_id,customer_id,ordered_at,amount[,channel,currency,status]."""
    bar, update = _progress(file, as_json)
    with connect(ctx.upgraded_dsn(), ctx.settings) as conn:
        if bar is not None:
            with bar:
                summary = bulk_import.import_orders(conn, ctx.settings, file, channel=channel,
                                                    report_path=report, progress=update)
        else:
            summary = bulk_import.import_orders(conn, ctx.settings, file, channel=channel,
                                                report_path=report)
    _report(summary, as_json)


@import_.command("customers")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--report", type=click.Path(path_type=Path),
              help="Where to write rejected rows (default FILE.rejects.csv).")
@click.option("--json", "as_json", is_flag=True, help="Print the counts as JSON.")
@pass_ctx
@handles_errors
def import_customers(ctx: Context, file: Path, report: Path | None, as_json: bool) -> None:
    """Import profiles: header customer_id[,email,phone,name]; empty cells change nothing."""
    bar, update = _progress(file, as_json)
    with connect(ctx.upgraded_dsn(), ctx.settings) as conn:
        if bar is not None:
            with bar:
                summary = bulk_import.import_customers(conn, ctx.settings, file,
                                                       report_path=report, progress=update)
        else:
            summary = bulk_import.import_customers(conn, ctx.settings, file, report_path=report)
    _report(summary, as_json)


# --- identities -----------------------------------------------------------------------------


def _print_json_or(data: dict, as_json: bool, text: str) -> None:
    click.echo(json.dumps(data, sort_keys=True, default=str) if as_json else text)


@main.command("merge")
@click.argument("survivor")
@click.argument("others", nargs=-1, required=True)
@click.option("--reason", help="Why (kept with the merge record).")
@click.option("--json", "as_json", is_flag=True, help="Print the merge record as JSON.")
@pass_ctx
@handles_errors
def merge_cmd(ctx: Context, survivor: str, others: tuple[str, ...], reason: str | None,
              as_json: bool) -> None:
    """Merge customers OTHERS into SURVIVOR (orders, identities, contact data; one transaction).

    The merged ids stay as aliases of SURVIVOR; `crm-service unmerge SURVIVOR` undoes it.
    """
    from crm_service.customers import identities

    with connect(ctx.upgraded_dsn(), ctx.settings) as conn:
        done = identities.merge(conn, ctx.settings, survivor, list(others), actor="cli",
                                reason=reason)
    moved = done["moved"]
    _print_json_or(done, as_json,
                   f"merge {done['merge_id']}: {', '.join(done['merged_ids'])} into "
                   f"{done['customer_id']} ({moved['orders']} orders, {moved['identities']} "
                   "channel accounts moved)")


@main.command("unmerge")
@click.argument("survivor")
@click.option("--merge-id", type=int, help="The merge to undo (default: the newest into "
                                           "SURVIVOR that is not undone).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_ctx
@handles_errors
def unmerge_cmd(ctx: Context, survivor: str, merge_id: int | None, as_json: bool) -> None:
    """Undo a merge into SURVIVOR: orders, identities and aliases go back where they were."""
    from crm_service.customers import identities

    with connect(ctx.upgraded_dsn(), ctx.settings) as conn:
        done = identities.unmerge(conn, ctx.settings, survivor, merge_id, actor="cli")
    _print_json_or(done, as_json,
                   f"merge {done['merge_id']} undone: {', '.join(done['merged_ids'])} are "
                   f"separate again ({done['restored']['orders']} orders, "
                   f"{done['restored']['identities']} channel accounts restored)")


@main.group("identities")
def identities_group() -> None:
    """One person across channels: linking rules and their review list."""


@identities_group.command("resolve")
@click.option("--json", "as_json", is_flag=True, help="Print the counts as JSON.")
@pass_ctx
@handles_errors
def identities_resolve(ctx: Context, as_json: bool) -> None:
    """Apply the linking rules (CRM_LINK_RULES) over the whole base, in one transaction.

    Customers sharing a normalised phone or email are merged into the oldest of them, except
    pairs holding different accounts on one channel: those are listed for review
    (`identities candidates`).
    """
    from crm_service.customers import identities

    began = time.perf_counter()
    with connect(ctx.upgraded_dsn(), ctx.settings) as conn, conn.transaction():
        linked = identities.link(conn, ctx.settings)
    counts = {**linked.as_dict(), "seconds": round(time.perf_counter() - began, 2),
              "rules": list(ctx.settings.link_rules)}
    _print_json_or(counts, as_json,
                   f"{linked.groups} group(s) of customers sharing a phone or email: "
                   f"{linked.merges} merge(s) of {linked.merged_customers} customer(s), "
                   f"{linked.candidates} new pair(s) for review"
                   + ("" if ctx.settings.link_rules else " (CRM_LINK_RULES=none)"))


@identities_group.command("candidates")
@click.option("--limit", type=click.IntRange(1, 10_000), default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the pairs as JSON.")
@pass_ctx
@handles_errors
def identities_candidates(ctx: Context, limit: int, as_json: bool) -> None:
    """Pairs a rule matched but did not merge (different accounts on one channel)."""
    from crm_service.customers import identities

    with connect(ctx.upgraded_dsn(), ctx.settings) as conn:
        pairs = identities.review_list(conn, limit)
    if as_json:
        click.echo(json.dumps({"candidates": pairs}, sort_keys=True))
        return
    for p in pairs:
        click.echo(f"{p['customer_a']}  {p['customer_b']}  shared {p['rule']}, both on "
                   f"{p['channel']} with different accounts")
    if not pairs:
        click.echo("no pairs awaiting review")


# --- score ----------------------------------------------------------------------------------


def _today(settings: Settings) -> date:
    return datetime.now(settings.zone).date()


@main.command()
@click.option("--as-of", "as_of", type=click.DateTime(formats=["%Y-%m-%d"]), default=None,
              help="Scoring date (orders up to the end of that day count); default today, or "
                   "the newest paid order's day when that is before yesterday.")
@click.option("--churn-horizon-days", "horizon", type=click.IntRange(MIN_CHURN_HORIZON,
                                                                    MAX_CHURN_HORIZON),
              default=None, help="Churn = no purchase in the next H days (default "
                                 "CRM_CHURN_HORIZON_DAYS, 90).")
@click.option("--dry-run", is_flag=True,
              help="Compute everything and report what publishing would do; publish nothing.")
@click.option("--allow-stale", is_flag=True,
              help="Score as of a day more than CRM_MAX_STALE_DAYS after the newest paid order.")
@click.option("--json", "as_json", is_flag=True, help="Print the run as JSON.")
@pass_ctx
@handles_errors
def score(ctx: Context, as_of: datetime | None, horizon: int | None, dry_run: bool,
          allow_stale: bool, as_json: bool) -> None:
    """Run one full scoring run and publish it atomically (or, with --dry-run, report it)."""
    from crm_service.scoring import dates, run_scoring

    with connect(ctx.upgraded_dsn(), ctx.settings) as conn:
        chosen = dates.choose_as_of(conn, ctx.settings, as_of.date() if as_of else None,
                                    _today(ctx.settings), allow_stale=allow_stale)
        conn.rollback()
        if chosen.notice:
            click.echo(f"note: {chosen.notice}", err=True)
        for dead in runs.fail_dead_runs(conn):
            click.echo(f"run {dead} was left running by a process that died: marked failed",
                       err=True)
        progress = _stage_printer() if not as_json and sys.stderr.isatty() else None
        result = run_scoring(conn, ctx.settings, as_of=chosen.as_of, churn_horizon_days=horizon,
                             dry_run=dry_run, allow_stale=allow_stale, progress=progress)
    _print_run(result.as_dict(), as_json)


def _stage_printer() -> Callable[[str], None]:
    """Print each stage of a run on stderr as it starts, with the time since the run began."""
    started = time.perf_counter()

    def show(name: str) -> None:
        click.echo(f"[{time.perf_counter() - started:6.1f} s] {name}", err=True)

    return show


def _print_run(run: dict[str, Any], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(run, sort_keys=True))
        return
    models = run["models"]
    gg = models["gamma_gamma"]["params"]
    counts = run["counts"]
    done = "dry run, NOT published" if run.get("dry_run") else "published"
    click.echo(f"run {run['run_id']} {done}: {counts['customers']} customers "
               f"({counts['repeat_buyers']} repeat buyers) as of {run['as_of']}")
    for name, label in ((n, cls.label) for n, cls in PURCHASE_MODELS.items()):
        m = models.get(name) or {"error": "not fitted"}
        if "error" in m:
            click.echo(f"{label}: did not converge ({m['error']})")
            continue
        mark = "  <- selected" if models["selected"] == name else ""
        click.echo(f"{label} (days): " + ", ".join(f"{k}={v:.4g}" for k, v in m["params"].items())
                   + f"; holdout MAE {m['holdout']['mae']:.4f}{mark}")
    click.echo("Gamma-Gamma: " + ", ".join(f"{k}={v:.4g}" for k, v in gg.items()))
    click.echo(f"expected purchases next 90 days: {counts['expected_purchases_90']:,.0f}; "
               f"12-month CLV total: {counts['clv_12m_total']:,.0f}")
    churn = models.get("churn")
    if churn:
        risk = counts.get("churn_risk", {})
        used = "ML model" if churn["used"] == "ml" else "BTYD baseline"
        line = f"churn over {churn['horizon_days']} days: {used}: {churn['reason']}"
        val = churn.get("validation")
        if val and val["ml"]["roc_auc"] is not None:
            line += (f"; validation AUC {val['ml']['roc_auc']:.3f} (ML) vs "
                     f"{val['btyd_baseline']['roc_auc']:.3f} (baseline)")
        click.echo(line)
        click.echo("churn risk: " + ", ".join(f"{k} {risk.get(k, 0):,}"
                                              for k in CHURN_RISKS))
    if run.get("dry_run"):
        _print_dry_run(counts)


def _print_dry_run(counts: dict[str, Any]) -> None:
    """What publishing would have done: tiers, moves against the live run, events per type."""
    report = counts.get("dry_run") or {}
    tiers = counts.get("tiers") or {}
    click.echo("tiers: " + ", ".join(f"{k} {v:,}" for k, v in tiers.items()))
    live = report.get("compared_with_run_id")
    if live is None:
        click.echo("no live run's scores to compare with (no run published yet, or its scores "
                   "were retired): publishing would emit no lifecycle event")
        return
    matrix = counts.get("tier_transition_matrix") or {}
    click.echo(f"tier moves against the live run {live} (from -> to: customers):")
    for source, row in sorted(matrix.items()):
        moves = ", ".join(f"{to} {n:,}" for to, n in sorted(row.items()) if n)
        click.echo(f"  {source} -> {moves}")
    events = report.get("events") or {}
    click.echo(f"publishing would emit {report.get('events_total', 0):,} event(s)"
               + (": " + ", ".join(f"{t} {n:,}" for t, n in events.items()) if events else ""))


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print what was done as JSON.")
@pass_ctx
@handles_errors
def maintenance(ctx: Context, as_json: bool) -> None:
    """Apply every retention window now: runs' score rows and the operational tables.

    Scores: CRM_KEEP_RUNS, CRM_KEEP_RUN_DAYS (the worker also applies this after every
    published run). Operational tables (the worker also applies these every
    CRM_MAINTENANCE_INTERVAL_MINUTES): events (CRM_EVENT_RETENTION_DAYS, never one a webhook
    has not received), ended webhook deliveries and attempts (CRM_DELIVERY_RETENTION_DAYS),
    expired console sessions, idempotency records, schedule slots. Prints what it deleted.
    """
    from crm_service.storage import housekeeping, retention

    with connect(ctx.upgraded_dsn(), ctx.settings) as conn:
        report = retention.apply_retention(conn, ctx.settings)
        tables = housekeeping.apply(conn, ctx.settings)
    if as_json:
        click.echo(json.dumps({"retention": dataclasses.asdict(report),
                               "housekeeping": dataclasses.asdict(tables)}, sort_keys=True))
        return
    s = ctx.settings
    rule = f"keep the newest {s.keep_runs} runs, none older than {s.keep_run_days} days"
    if report.busy:
        click.echo("another retention pass is running (a worker after its run?); no score rows "
                   "retired")
    else:
        if report.deferred:
            click.echo(f"runs {_ids(report.deferred)} are due but a reader held them; the next "
                       "pass retires them")
        if report.retired:
            click.echo(f"retired the score rows of runs {_ids(report.retired)} ({rule}); their "
                       "records, models and plots stay")
        else:
            click.echo(f"nothing to retire ({rule})")
        if report.orphans_dropped:
            click.echo("dropped score tables left by unpublished runs "
                       f"{_ids(report.orphans_dropped)}")
        click.echo(f"runs with scores: {_ids(report.kept) or 'none'}")
    if tables.busy:
        click.echo("another housekeeping pass is running (a worker?); operational tables left "
                   "to it")
    else:
        click.echo("deleted: " + ", ".join(f"{n:,} {name.replace('_', ' ')}"
                                           for name, n in tables.deleted.items()))
    for held in tables.held_by_webhooks:
        click.echo(f"webhook {held['webhook_id']} ({held['status']}) holds {held['events']:,} "
                   f"events older than {s.event_retention_days} days (oldest {held['oldest']}): "
                   "kept until it receives them; enable or delete it to release them")


def _ids(ids: list[int]) -> str:
    return ", ".join(str(i) for i in ids)


@main.group("export")
def export_() -> None:
    """Export results."""


@export_.command("scores")
@click.option("--horizon-days", type=click.IntRange(min=0, max=3650), default=90,
              show_default=True,
              help="Horizon of the expected_purchases and purchases_p10/p90 columns.")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Write to this file (default: standard output).")
@pass_ctx
@handles_errors
def export_scores(ctx: Context, horizon_days: int, out: Path | None) -> None:
    """CSV of the live scoring run, one row per customer."""
    from crm_service.audiences.export import export_scores as write_scores

    with connect(ctx.upgraded_dsn(), ctx.settings) as conn:
        if out is None:
            write_scores(conn, sys.stdout, horizon_days=horizon_days)
            return
        tmp = out.with_name(out.name + ".partial")
        try:
            with open(tmp, "w", encoding="utf-8", newline="") as fh:
                n = write_scores(conn, fh, horizon_days=horizon_days)
            os.replace(tmp, out)
        finally:
            tmp.unlink(missing_ok=True)
    click.echo(f"wrote {n} customers to {out}", err=True)


# --- serve / demo ----------------------------------------------------------------------------

# Longer than CRM_STATEMENT_TIMEOUT_MS's default, so a slow request ends in a problem+json
# answer from the app rather than gunicorn killing the worker.
WORKER_TIMEOUT_SECONDS = 120
# Keep-alive connections, the lookup fast lane batched on an event loop, other requests in
# threads; HTTP-parser errors (URL too long, bad headers) are problem+json, not HTML.
GUNICORN_WORKER = "api.serving.server.ProblemKeepAliveWorker"
# The exit plan of api/serving/gunicorn_adapter.py: gunicorn's gthread worker (public API only;
# lookups answered one at a time, without batching).
HTTP_WORKERS = {"keepalive": GUNICORN_WORKER, "threads": "api.serving.server.ProblemThreadWorker"}
KEEPALIVE_SECONDS = 5


def _check_port_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise ValidationError(
                f"cannot listen on {host}:{port} ({exc.strerror}); another server may be "
                "running there: stop it, or pick another port with --port or CRM_PORT"
            ) from None


def _serve(ctx: Context, host: str, port: int, workers: int, threads: int = 4,
           http_worker: str = "keepalive") -> int:
    _check_port_free(host, port)
    dsn = ctx.upgraded_dsn(create=True)
    env = dict(os.environ, DATABASE_URL=dsn, **{SERVE_CHILD: "1"})
    # Metrics: every gunicorn worker and the worker beside them count into one folder, which
    # /metrics sums (prometheus_client's multiprocess mode). A fresh one per server: counts
    # start at zero with the server, as Prometheus expects of a restarted target.
    metrics_dir = None
    if env.get("PROMETHEUS_MULTIPROC_DIR"):  # the operator's: it must exist
        Path(env["PROMETHEUS_MULTIPROC_DIR"]).mkdir(parents=True, exist_ok=True)
    else:
        import tempfile

        metrics_dir = tempfile.mkdtemp(prefix="crm-metrics-")
        env["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    background = None
    if ctx.settings.embedded:
        # The children get DATABASE_URL, so they would count as external and refuse to run
        # without CRM_SECRET_KEY: hand them the embedded key file's key.
        from crm_service.platform.secretbox import server_key

        env["CRM_SECRET_KEY"] = base64.b64encode(server_key(ctx.settings)).decode()
        # One machine, one command: the scoring worker runs beside the API. In production run
        # `crm-service worker` as its own process (as many as you like).
        background = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
            [sys.executable, "-m", "crm_service", "worker"], env=env)
    # The app logs each request as JSON (route template, status, latency, request id);
    # gunicorn's own access log would repeat it with raw paths, which hold customer ids.
    cmd = [sys.executable, "-m", "gunicorn", "--bind", f"{host}:{port}", "--workers",
           str(workers), "--threads", str(threads),
           "--timeout", str(WORKER_TIMEOUT_SECONDS), "--graceful-timeout", "10",
           "--keep-alive", str(KEEPALIVE_SECONDS),
           "--no-control-socket", "--worker-class", HTTP_WORKERS[http_worker],
           "-c", "python:api.serving.gunicorn_hooks", "api.wsgi:app"]
    # gunicorn runs as a child: this process keeps the embedded PostgreSQL's handle and stops
    # it when the server exits.
    child = subprocess.Popen(cmd, env=env)  # noqa: S603 - fixed argv, no shell

    def forward(signum: int, _frame: Any) -> None:
        child.send_signal(signum)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, forward)
    try:
        return child.wait()
    finally:
        if background is not None:
            background.terminate()
            background.wait(timeout=30)
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)


@main.command()
@click.option("--poll-seconds", type=click.FloatRange(min=0.1), default=2.0, show_default=True,
              help="How often to look for queued scoring runs when idle.")
@pass_ctx
@handles_errors
def worker(ctx: Context, poll_seconds: float) -> None:
    """Run queued and scheduled scoring runs, and deliver webhooks, until stopped.

    Scoring runs are requested with POST /v1/scoring-runs or queued by the daily schedule
    (CRM_SCORE_SCHEDULE in CRM_TIMEZONE); run as many workers as you like.
    """
    import threading

    from crm_service.platform import logs
    from crm_service.platform.worker import run_worker

    logs.configure(ctx.settings.log_level, ctx.settings.log_format)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    dsn = ctx.upgraded_dsn()
    run_worker(lambda: connect(dsn, ctx.settings), ctx.settings, poll_seconds=poll_seconds,
               stop=stop)


@main.command()
@click.option("--host", default=None, help="Bind address (CRM_HOST, default 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port (CRM_PORT, default 8000).")
@click.option("--workers", type=click.IntRange(1, 64), default=None,
              help="gunicorn worker processes (CRM_WORKERS, default 2).")
@click.option("--threads", type=click.IntRange(1, 64), default=None,
              help="threads per worker for requests other than customer lookups (CRM_THREADS, "
                   "default 4).")
@click.option("--http-worker", type=click.Choice(sorted(HTTP_WORKERS)), default="keepalive",
              envvar="CRM_HTTP_WORKER", show_default=True,
              help="keepalive: lookups batched on an event loop (needs gunicorn 27's internals, "
                   "checked at start); threads: gunicorn's gthread worker, public API only, "
                   "lookups one at a time (the fallback if a gunicorn upgrade breaks the "
                   "first; CRM_HTTP_WORKER).")
@pass_ctx
@handles_errors
def serve(ctx: Context, host: str | None, port: int | None, workers: int | None,
          threads: int | None, http_worker: str) -> None:
    """Run the HTTP API with gunicorn (migrations are applied first)."""
    s = ctx.settings
    sys.exit(_serve(ctx, host or s.host, port or s.port, workers or s.workers,
                    threads or s.threads, http_worker))


@main.command()
@click.option("--host", default=None, help="Bind address (CRM_HOST, default 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port (CRM_PORT, default 8000).")
@click.option("--no-serve", is_flag=True, help="Load the demo data and exit.")
@pass_ctx
@handles_errors
def demo(ctx: Context, host: str | None, port: int | None, no_serve: bool) -> None:
    """Load the CDNOW demo orders shipped with lifetimes, mint an admin key, and serve.

    Each run replaces the previous demo admin key (the old one is revoked).
    """
    from crm_service.platform.demo import CDNOW_AS_OF, load_cdnow_sample, load_demo_profiles
    from crm_service.scoring import run_scoring

    s = ctx.settings
    host, port = host or s.host, port or s.port
    if not no_serve:
        _check_port_free(host, port)
    dsn = ctx.upgraded_dsn(create=True)
    with connect(dsn, s) as conn:
        summary = load_cdnow_sample(conn, s)
        load_demo_profiles(conn, s)
        live = runs.active_run(conn)
        conn.commit()
        # A later run (queued through the API, say) stays live: re-scoring as of the demo date
        # would roll it back and fire every transition in reverse.
        run = None if live else run_scoring(conn, s, as_of=CDNOW_AS_OF)
        for old in api_keys.list_keys(conn):
            if old.name == DEMO_KEY_NAME and old.revoked_at is None:
                api_keys.revoke_key(conn, old.id)
        key, token = api_keys.create_key(conn, DEMO_KEY_NAME, ["admin"])
        conn.commit()
    base = f"http://{host}:{port}"
    click.echo(f"demo data: CDNOW sample, {summary.rows} orders "
               f"({summary.inserted} new, {summary.duplicates} already loaded)")
    if run is not None:
        _print_run(run.as_dict(), as_json=False)
    elif live is not None:
        click.echo(f"scores: the live run {live['run_id']} as of {live['as_of']} "
                   "(re-score with: crm-service score --as-of DATE)")
    click.echo(f"admin API key (shown once; replaces earlier demo keys): {token}")
    if no_serve:
        click.echo("start the API with: crm-service serve")
        return
    click.echo(f"console: {base}/console/   (sign in with the admin key above; try looking "
               "up cdnow-0042 or cdnow-0007@example.com)")
    click.echo(f"API:  {base}/v1   docs: {base}/docs   OpenAPI: {base}/openapi.json")
    # The demo's history ends in 1998: a nightly run as of today would turn everyone dormant.
    # Webhook receivers on this machine are allowed, to try them out.
    os.environ.setdefault("CRM_SCORE_SCHEDULE", "off")
    os.environ.setdefault("CRM_WEBHOOK_ALLOW_HOSTS", "127.0.0.1,localhost")
    # The demo's made-up phones are Chinese mobiles: "138 0000 0042" finds "+86 138 0000 0042".
    os.environ.setdefault("CRM_PHONE_COUNTRY_CODE", "86")
    click.echo(f"demo: score schedule {os.environ['CRM_SCORE_SCHEDULE']}; webhook receivers "
               f"allowed on {os.environ['CRM_WEBHOOK_ALLOW_HOSTS']}")
    click.echo("try:  curl -X POST " + base + "/v1/orders -H 'Authorization: Bearer " + token
               + "' -H 'Content-Type: application/json' -d '{\"orders\": [{\"order_id\": "
               "\"T-1\", \"customer_id\": \"C-1\", \"channel\": \"tmall\", "
               "\"ordered_at\": \"2024-05-01T10:30:00+08:00\", \"amount\": \"129.90\"}]}'")
    sys.stdout.flush()
    sys.exit(_serve(ctx, host, port, s.workers, s.threads))


DEMO_KEY_NAME = "demo-admin"


if __name__ == "__main__":  # pragma: no cover
    main()
