"""Scoring runs and the live models: ``GET /v1/models/active``, ``/v1/scoring-runs``."""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Any

from flask import Response, request, stream_with_context, url_for
from flask.views import MethodView
from flask_smorest import Blueprint

from api import examples
from api.auth import require
from api.schemas import (
    AudiencePageSchema,
    AudienceQuerySchema,
    CustomerScoresSchema,
    PredictionRequestSchema,
    RunListQuerySchema,
    RunListSchema,
    RunSchema,
    ScoringRunRequestSchema,
)
from api.services import services
from crm_service.audiences import audience
from crm_service.customers.ids import check_customer_id
from crm_service.errors import NotFoundError, ValidationError
from crm_service.scoring import dates
from crm_service.scoring.plots import PLOTS, run_plot
from crm_service.scoring.predictions import predict
from crm_service.storage import runs
from crm_service.storage import score_reads as reads

blp = Blueprint("scoring", __name__, url_prefix="/v1", description="Scoring runs and models")


def _jsonable(run: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in run.items()}


@blp.route("/models/active")
class ActiveModels(MethodView):
    """The parameters behind the scores readers see now."""

    @blp.doc(security=[{"bearerAuth": []}])
    @blp.response(200, RunSchema, example=examples.RUN)
    @blp.alt_response(404, description="no run published yet")
    @require("scores:read")
    def get(self):
        """The live run: fitted models, SEs, holdout metrics, churn validation, tier policy.

        BG/NBD, Pareto/NBD and Gamma-Gamma parameters, the selected purchase model, the churn
        model's validation against the BTYD baseline, and the tier policy version in force.
        """
        with services().reader.connection() as conn:
            run = runs.active_run(conn)
        if run is None:
            raise NotFoundError("no scoring run has been published yet")
        return _jsonable(run)


@blp.route("/scoring-runs")
class ScoringRuns(MethodView):
    """Request a scoring run (a worker executes it); list runs."""

    @blp.doc(security=[{"bearerAuth": []}])
    @blp.arguments(RunListQuerySchema, location="query")
    @blp.response(200, RunListSchema, example=examples.RUN_LIST)
    @blp.alt_response(422, description="an unknown status, a limit out of range, a bad cursor")
    @require("scores:read")
    def get(self, query):
        """Runs, newest first, ``limit`` per page (≤ 100), optionally by status or dry run.

        Each with its status, as_of, customers, selected model and holdout MAE, churn model
        and its validation, stage timings, whether it is live and whether its scores are still
        kept (``scores_kept``). Follow ``next_cursor`` for older runs.
        """
        before = _decode_run_cursor(query["cursor"]) if query.get("cursor") else None
        limit = query["limit"]
        with services().reader.connection() as conn:
            rows = runs.list_runs(conn, status=query.get("status"), dry_run=query.get("dry_run"),
                                  before=before, limit=limit + 1)
        more = len(rows) > limit
        items = [_listed(r) for r in rows[:limit]]
        return {"items": items,
                "next_cursor": _encode_run_cursor(items[-1]["run_id"]) if more else None}

    @blp.doc(security=[{"bearerAuth": []}])
    @blp.arguments(ScoringRunRequestSchema, required=False,
                   example={"as_of": "1998-06-30", "churn_horizon_days": 90, "dry_run": True})
    @blp.response(202, RunSchema, example=examples.QUEUED_RUN, headers={
        "Location": {"schema": {"type": "string"}, "description": "the run's URL"}})
    @blp.alt_response(422, description="as_of in the future, or more than CRM_MAX_STALE_DAYS "
                                       "after the newest paid order (without allow_stale)")
    @require("runs:write")
    def post(self, body):
        """Queue a full scoring run as of ``as_of``, or a dry run of one.

        Default ``as_of``: today in CRM_TIMEZONE, or the day of the newest paid order when that
        is before yesterday (``notice`` says so). A run more than CRM_MAX_STALE_DAYS after the
        newest paid order is refused (422) unless ``allow_stale`` is true. With ``dry_run``
        the run computes everything and reports (``counts.dry_run``: events per type;
        ``counts.tier_transition_matrix``) without publishing. Poll the returned URL: status
        goes queued, running (with progress), then succeeded (published atomically, or for a
        dry run reported) or failed (with the reason; the previous run stays live).
        """
        svc = services()
        today = datetime.now(svc.settings.zone).date()
        body = body or {}
        allow_stale = bool(body.get("allow_stale"))
        with svc.pool.connection() as conn:
            chosen = dates.choose_as_of(conn, svc.settings, body.get("as_of"), today,
                                        allow_stale=allow_stale)
            run_id = runs.create_run(
                conn, chosen.as_of, svc.settings.timezone, status="queued",
                churn_horizon_days=body.get("churn_horizon_days")
                or svc.settings.churn_horizon_days,
                dry_run=bool(body.get("dry_run")), allow_stale=allow_stale)
            run = runs.run_record(conn, run_id)
        assert run is not None
        answer = _jsonable(run)
        if chosen.notice:
            answer["notice"] = chosen.notice
        return answer, 202, {"Location": url_for("scoring.ScoringRun", run_id=run_id)}


def _encode_run_cursor(run_id: int) -> str:
    return base64.urlsafe_b64encode(f"run:{run_id}".encode()).decode().rstrip("=")


def _decode_run_cursor(cursor: str) -> int:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        kind, _, value = text.partition(":")
        if kind != "run" or not value.isdigit() or len(value) > 18:
            raise ValueError(text)
        return int(value)
    except ValueError:
        raise ValidationError("cursor: not a cursor this API returned") from None


def _listed(row: dict[str, Any]) -> dict[str, Any]:
    """One run of the list: the record's summary, churn model reduced to what was used."""
    r = _jsonable(row)
    churn = r.pop("churn") or {}
    used = churn.get("used")
    return {
        "run_id": r["id"], "status": r["status"], "dry_run": r["dry_run"], "live": r["live"],
        "as_of": r["as_of"], "created_at": r["created_at"], "started_at": r["started_at"],
        "finished_at": r["finished_at"],
        "seconds": _seconds(row["started_at"], row["finished_at"]),
        "customers": r["customers"], "selected_model": r["selected_model"],
        "holdout_mae": r["holdout_mae"],
        "churn": {"used": used, "reason": churn.get("reason"),
                  "horizon_days": r["churn_horizon_days"],
                  "validation": churn.get("validation")} if churn else None,
        "stage_seconds": r["stage_seconds"],
        "scores_kept": r["status"] == "succeeded" and r["scores_retired_at"] is None,
        "scores_retired_at": r["scores_retired_at"], "previous_run_id": r["previous_run_id"],
        "error": r["error"], "dry_run_report": r["dry_run_report"],
    }


def _seconds(started: datetime | None, finished: datetime | None) -> float | None:
    return round((finished - started).total_seconds(), 3) if started and finished else None


@blp.route("/scoring-runs/<int:run_id>")
class ScoringRun(MethodView):
    """One scoring run, running, succeeded or failed."""

    @blp.doc(security=[{"bearerAuth": []}])
    @blp.response(200, RunSchema, example=examples.RUN)
    @blp.alt_response(404, description="no such run")
    @require("scores:read")
    def get(self, run_id: int):
        """Status, counts, models and, for a failed run, the reason."""
        with services().reader.connection() as conn:
            run = runs.run_record(conn, run_id)
        if run is None:
            raise NotFoundError(f"no scoring run {run_id}")
        return _jsonable(run)


@blp.route("/predictions")
class Predictions(MethodView):
    """What-if predictions from the live run's models."""

    @blp.doc(security=[{"bearerAuth": []}])
    @blp.arguments(PredictionRequestSchema, example={
        "cases": [{"frequency": 3, "recency": 120, "T": 200, "monetary_value": 35.5}],
        "horizons": [30, 90]})
    @blp.response(200, example=examples.PREDICTIONS)
    @blp.alt_response(404, description="no run published yet")
    @blp.alt_response(422, description="invalid or impossible history (e.g. recency > T)")
    @require("scores:read")
    def post(self, body):
        """P(alive), expected purchases, spend and 12-month CLV for given histories."""
        with services().reader.connection() as conn:
            return predict(conn, body["cases"], body["horizons"])


@blp.route("/scoring-runs/<int:run_id>/plots/<string:name>.svg")
class RunPlot(MethodView):
    """Diagnostics plots of a run, as SVG."""

    @blp.doc(security=[{"bearerAuth": []}], responses={"200": {
        "description": "the plot", "content": {"image/svg+xml": {
            "example": '<svg xmlns="http://www.w3.org/2000/svg" ...>...</svg>'}}}}, parameters=[{
            "in": "path", "name": "name", "required": True,
            "schema": {"type": "string", "enum": list(PLOTS)}}])
    @blp.alt_response(404, description="no such run or plot, or the run has no diagnostics")
    @require("scores:read")
    def get(self, run_id: int, name: str):
        """holdout_by_frequency, p_alive (by frequency and recency) or tracking."""
        if name not in PLOTS:
            raise NotFoundError(f"no plot {name!r}; plots: {', '.join(PLOTS)}")
        with services().reader.connection() as conn:
            svg = run_plot(conn, run_id, name)
        if svg is None:
            raise NotFoundError(f"scoring run {run_id} has no diagnostics (not found, or not "
                                "succeeded)")
        return Response(svg, mimetype="image/svg+xml",
                        headers={"Cache-Control": "private, max-age=3600"})


@blp.route("/customers/<customer_id:customer_id>/scores")
class CustomerScores(MethodView):
    """One customer's scores in the live run."""

    @blp.doc(security=[{"bearerAuth": []}])
    @blp.response(200, CustomerScoresSchema, example=examples.CUSTOMER_SCORES)
    @blp.alt_response(404, description="no run published yet, or no scores for this customer")
    @blp.alt_response(422, description="not a valid customer id")
    @require("scores:read")
    def get(self, customer_id: str):
        """One customer's P(alive), expected purchases, spend, CLV and churn probability and band.

        Also the run (id, as_of) they come from: all from the live run, in one read.
        """
        from crm_service.customers import identities

        check_customer_id(customer_id)
        with services().reader.connection() as conn:
            # A merged id answers with its survivor's scores, saying so.
            merged_into = identities.survivor_of(conn, customer_id)
            found = reads.customer_scores(conn, merged_into or customer_id)
        if found is None:
            raise NotFoundError("no scoring run has been published yet")
        if found["scores"] is None:
            raise NotFoundError(f"customer {customer_id!r} has no scores in the live run "
                                f"(run {found['run_id']} as of {found['as_of']}): no paid "
                                "order on or before that day, or an unknown id")
        scores = _jsonable(found.pop("scores"))
        return {**_jsonable(found), **scores,
                **({"merged_into": merged_into} if merged_into else {})}


@blp.route("/segments")
class Segments(MethodView):
    """The state of the base in the live run."""

    @blp.doc(security=[{"bearerAuth": []}])
    @blp.response(200, example={
        "run_id": 2, "as_of": "1998-06-30",
        "by_tier": {"dormant": {"customers": 1688, "historic_spend": 101234.5,
                                "clv_12m": 8123.4}},
        "tier_transitions": {"active": {"active": 200, "dormant": 35}}})
    @blp.alt_response(404, description="no run published yet")
    @require("scores:read")
    def get(self):
        """Customers, historic spend and CLV per segment; tier moves since the previous run.

        Per tier, value segment and RFM segment: customers, historic spend and 12-month CLV.
        ``tier_transitions[from][to]`` counts customers by their tier in the previous live run
        (``none``: not scored there) and now; null after the first run.
        """
        with services().reader.connection() as conn:
            run = runs.active_run(conn)
        if run is None:
            raise NotFoundError("no scoring run has been published yet")
        counts = run["counts"] or {}
        seg = counts.get("segments", {})
        return {"run_id": run["run_id"], "as_of": run["as_of"].isoformat(),
                "customers": counts.get("customers"),
                "by_tier": seg.get("tier"), "by_value_segment": seg.get("value_segment"),
                "by_rfm_segment": seg.get("rfm_segment"),
                "tier_transitions": counts.get("tier_transition_matrix")}


@blp.route("/customers")
class Audience(MethodView):
    """Audiences for campaign tools: filter the live run's customers."""

    @blp.doc(security=[{"bearerAuth": []}])
    @blp.arguments(AudienceQuerySchema, location="query")
    @blp.response(200, AudiencePageSchema, content_type="application/json",
                  example=examples.AUDIENCE_PAGE)
    @blp.alt_response(200, description="the whole audience as CSV (with Accept: text/csv)",
                      content_type="text/csv")
    @blp.alt_response(404, description="no run published yet")
    @blp.alt_response(422, description="a filter out of range, or a stale cursor")
    @require("scores:read")
    def get(self, query):
        """Customers matching every filter, by customer id, ``limit`` per page (≤ 1000).

        With ``Accept: text/csv`` the whole audience streams as CSV (limit and cursor are
        ignored), read with a server-side cursor so memory stays flat however large it is.
        """
        filters = audience.AudienceFilter(**{k: v for k, v in query.items()
                                             if k not in ("sort", "cursor", "limit")})
        accept = request.accept_mimetypes
        if accept.best_match(["application/json", "text/csv"]) == "text/csv" \
                and accept["text/csv"] > accept["application/json"]:
            pool = services().reader

            def rows():
                with pool.connection() as conn:
                    yield from audience.stream_csv(conn, filters, query["sort"])

            chunks = rows()
            first = next(chunks)  # fails here (404 etc.) before the 200 is sent
            return Response(stream_with_context(_chain(first, chunks)), mimetype="text/csv",
                            headers={"Content-Disposition": 'attachment; filename="audience.csv"'})
        with services().reader.connection() as conn:
            return audience.page(conn, filters, limit=query["limit"], cursor=query.get("cursor"),
                                 sort=query["sort"])


def _chain(first, rest):
    yield first
    yield from rest
