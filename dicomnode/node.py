"""``dicomnode serve``: receiver, completeness sweep and worker in one process; or one role of them.

Roles, sharing one database URL and one spool path (local, or a shared file system):

- ``receive``: the SCP, the completeness sweep (which queues jobs), the audit anchor, the ATNA forwarder
  and the retention purge;
- ``work``: the worker (one job at a time) and the requeueing of jobs whose lease ran out;
- ``web``: the admin API.

``serve`` runs all three. SIGTERM/SIGINT stop it cleanly: the SCP stops accepting, the sweep stops, the
job in hand finishes (or, after a hard kill, its lease runs out and it is requeued).
"""

from __future__ import annotations

import logging
import signal
import threading
from dataclasses import dataclass
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler  # type: ignore[import-untyped]
from prometheus_client import CollectorRegistry

import dicomnode
from dicomnode.admin.app import start_admin
from dicomnode.admin.deps import AdminContext
from dicomnode.admin.server import AdminServer
from dicomnode.audit.anchor import write_checkpoint
from dicomnode.audit.bursts import BurstAuditor
from dicomnode.audit.events import AuditEvent, Outcome
from dicomnode.audit.syslog import Forwarder
from dicomnode.audit.trail import record
from dicomnode.config_store import runtime_rules
from dicomnode.db import make_engine, make_sessionmaker, session_scope
from dicomnode.evaluation.references import evaluate_pending
from dicomnode.inference.registry import Registry, RuntimeOptions, default_rules, suspended
from dicomnode.inference.volume import check_usable
from dicomnode.jobs.notify import Listener, announce, is_postgres
from dicomnode.jobs.repository import release_held, requeue_expired
from dicomnode.jobs.routing import effective_rules
from dicomnode.log import extra
from dicomnode.migrate import upgrade
from dicomnode.monitoring.evaluation import EvaluationCollector
from dicomnode.monitoring.models import ModelMetrics, recent_outputs
from dicomnode.net import reactor
from dicomnode.pipeline import PipelineContext
from dicomnode.query.counts import PacsCounts
from dicomnode.receive.handlers import ReceiveContext
from dicomnode.receive.scp import start_scp
from dicomnode.settings import Settings
from dicomnode.store.completion import HeaderCache, InstalledModels, sweep
from dicomnode.store.landing import Landing
from dicomnode.store.retention import purge
from dicomnode.worker import Worker, settle_heap

log = logging.getLogger(__name__)


@dataclass
class Node:
    settings: Settings
    servers: list[Any]
    scheduler: BackgroundScheduler
    worker: Worker | None
    ctx: PipelineContext
    forwarder: Forwarder | None
    admin: AdminServer | None
    listener: Listener | None = None
    bursts: BurstAuditor | None = None
    counts: PacsCounts | None = None

    def stop(self) -> None:
        for server in self.servers:
            server.shutdown()
        if self.admin is not None:
            self.admin.shutdown()
            self.admin.server_close()
        self.scheduler.shutdown(wait=True)
        if self.counts is not None:  # after the sweep that hands it questions; one in flight is abandoned
            self.counts.stop()
        if self.listener is not None:
            self.listener.stop()
        if self.worker is not None:
            self.worker.stop()
            release_held(self.ctx.sessions, self.worker.worker_id)
        if self.bursts is not None:
            self.bursts.flush(everything=True)  # each open burst's count, before the stop row
        with session_scope(self.ctx.sessions) as session:
            record(session, AuditEvent.APPLICATION_STOP, actor=self.settings.ae_title)
        _anchor(self.ctx, self.forwarder)  # the head at shutdown: the stop row is the last one anchored
        if self.forwarder is not None:  # with a last pass: the stop message and checkpoint go out too
            self.forwarder.stop(flush=True)
        log.info("node stopped", extra=extra(stage="serve"))


def _retention(ctx: PipelineContext) -> None:
    try:
        purge(ctx.settings, ctx.sessions)
    except Exception:
        log.exception("retention purge failed", extra=extra(stage="retention"))


def _anchor(ctx: PipelineContext, forwarder: Forwarder | None) -> None:
    """The trail's head to the anchor file and, with an audit repository, to the ATNA stream."""
    try:
        checkpoint = write_checkpoint(ctx.sessions, ctx.settings.anchor_path)
        if forwarder is not None:
            forwarder.checkpoint(checkpoint)
    except Exception:
        log.exception("audit anchor checkpoint failed", extra=extra(stage="audit"))


def _maintenance(ctx: PipelineContext, roles: frozenset[str], wake: threading.Event | None,
                 headers: HeaderCache, bursts: BurstAuditor, counts: PacsCounts | None = None) -> None:
    try:
        bursts.flush()  # the closing row, with its count, of each burst of refusals that has ended
        if "work" in roles and requeue_expired(ctx.sessions, ctx.settings.retry_max_attempts):
            announce(ctx.sessions, wake)
        if "receive" in roles:
            rules = runtime_rules(ctx.settings, ctx.sessions, default_rules(ctx.registry.manifests,
                                                                            ctx.settings.demo_models))
            models = InstalledModels({m.id: m.version for m in ctx.registry.manifests.values()}, check_usable,
                                     suspended(ctx.registry.manifests, ctx.registry.unavailable,
                                               ctx.settings.demo_models))
            sweep(ctx.sessions, ctx.settings.study_idle_seconds, rules, models, headers,
                  wait_seconds=ctx.settings.sweep_interval_seconds, on_routed=lambda: announce(ctx.sessions, wake),
                  ask_counts=counts if counts is not None and counts.enabled() else None,  # query peers' counts
                  quiet_seconds=ctx.settings.query_quiet_seconds)
            if ctx.settings.reference.enabled:
                evaluate_pending(ctx.settings, ctx.sessions, ctx.registry.manifests)
    except Exception:
        log.exception("sweep failed", extra=extra(stage="sweep"))


ROLES = frozenset({"receive", "work", "web"})


def start_node(settings: Settings, roles: frozenset[str] = ROLES) -> Node:
    """Migrate the database, then start the given roles (all: ``serve``); returns the running node."""
    reactor.install()  # every role sends or receives DICOM: an unfollowed pynetdicom is refused at start
    settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    upgrade(settings.db_url)
    sessions = make_sessionmaker(make_engine(settings.db_url))
    registry = Registry(settings.models_dir, options=RuntimeOptions(
        device=settings.device, threads=settings.inference_threads, concurrency=settings.inference_concurrency))
    for folder, error in registry.errors.items():
        log.error("model not loaded: %s", error, extra=extra(stage="serve", model=folder))
    # a model that cannot run is unavailable from the start: its rules are suspended (no job, no notice);
    # a process that runs models loads each one now (warm), one that only routes checks the files
    unavailable = registry.check(load="work" in roles and settings.start_worker)
    for model_id, reason in unavailable.items():
        log.error("model unavailable, its rules are suspended: %s", reason, extra=extra(stage="serve", model=model_id))
    metrics = ModelMetrics(CollectorRegistry(auto_describe=True), registry.manifests)
    metrics.registry.register(EvaluationCollector(sessions))
    for manifest in registry.manifests.values():
        metrics.seed(manifest.id, recent_outputs(sessions, settings.results_dir, manifest))
    ctx = PipelineContext(settings=settings, sessions=sessions, registry=registry, metrics=metrics)
    defaults = default_rules(registry.manifests, settings.demo_models)
    rules = effective_rules(settings.rules, defaults)
    held = suspended(registry.manifests, unavailable, settings.demo_models)
    for rule in rules:
        if rule.model in held and rule in settings.rules:
            log.warning("rule %s is suspended: %s", rule.name, held[rule.model], extra=extra(stage="serve"))
    requeue_expired(sessions, settings.retry_max_attempts)
    with session_scope(sessions) as session:
        record(session, AuditEvent.APPLICATION_START, actor=settings.ae_title, version=dicomnode.__version__,
               models=sorted(registry.manifests), rules=[r.name for r in rules], roles=sorted(roles),
               unavailable=sorted(unavailable), demo_models=settings.demo_models)
        for model_id, reason in unavailable.items():  # one row per model that cannot run
            record(session, AuditEvent.MODEL_UNAVAILABLE, Outcome.SERIOUS_FAILURE, actor=settings.ae_title,
                   model=model_id, reason=f"model {model_id} unavailable: {reason}")
    receive = "receive" in roles
    forwarder = Forwarder(settings, sessions) if receive and settings.audit_repository else None
    _anchor(ctx, forwarder)
    worker = Worker(ctx) if "work" in roles and settings.start_worker else None
    wake = worker.wake if worker is not None else None
    bursts = BurstAuditor(sessions, settings.audit_burst_seconds)
    landing = Landing(settings, sessions, bursts)  # C-STORE and STOW-RS share one group commit
    servers = start_scp(ReceiveContext(settings=settings, sessions=sessions, bursts=bursts,
                                       landing=landing)) if receive else []
    scheduler = BackgroundScheduler()
    counts = PacsCounts(settings, sessions)
    scheduler.add_job(_maintenance, "interval", seconds=settings.sweep_interval_seconds,
                      args=[ctx, roles, wake, HeaderCache(settings.max_inflated_bytes), bursts, counts],
                      max_instances=1, coalesce=True, id="sweep")
    if receive:
        scheduler.add_job(_anchor, "interval", seconds=settings.audit_anchor_seconds, args=[ctx, forwarder],
                          max_instances=1, coalesce=True, id="audit-anchor")
    if receive and settings.retention_days > 0:
        scheduler.add_job(_retention, "interval", seconds=settings.retention_sweep_seconds, args=[ctx],
                          max_instances=1, coalesce=True, id="retention")
    scheduler.start()
    admin = None
    if "web" in roles and settings.admin_port:
        admin = start_admin(AdminContext(settings, sessions,
                                         models=tuple(sorted(registry.manifests)) if worker is not None else None,
                                         registry=metrics.registry,
                                         default_rules=tuple(defaults), unavailable=registry.unavailable,
                                         bursts=bursts, landing=landing))
    if forwarder is not None:
        forwarder.start()
    listener = None
    if worker is not None:
        if is_postgres(settings.db_url):  # jobs queued by other processes
            listener = Listener(settings.db_url, worker.wake)
            listener.start()
        worker.start()
    if receive and settings.pacs is None:
        rejects_all = settings.require_known_callers and not settings.peers
        log.warning("no PACS configured (DICOMNODE_PACS): results cannot be sent%s",
                    ", and every caller is rejected" if rejects_all else "", extra=extra(stage="serve"))
    settle_heap()  # started: what start-up built stays, and full collections no longer walk it
    log.info("node started", extra=extra(stage="serve", roles=",".join(sorted(roles)), ae_title=settings.ae_title,
                                         port=settings.port if receive and settings.plain_port_enabled else "off",
                                         tls_port=(settings.tls_port if receive else None) or "off",
                                         models=",".join(sorted(registry.manifests))))
    return Node(settings=settings, servers=servers, scheduler=scheduler, worker=worker, ctx=ctx,
                forwarder=forwarder, admin=admin, listener=listener, bursts=bursts, counts=counts)


def _stop_on_signal() -> threading.Event:
    """An event that SIGTERM or SIGINT sets; installed before the node starts, so that a signal that
    arrives while it starts (the SCP may already listen) stops it cleanly once it has started."""
    stopping = threading.Event()

    def _on_signal(signum: int, _frame: Any) -> None:
        log.info("signal %d: stopping", signum, extra=extra(stage="serve"))
        stopping.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    return stopping


def serve(settings: Settings, roles: frozenset[str] = ROLES) -> int:
    """Run the given roles (all: ``serve``; ``receive``, ``work``, ``web`` alone) until SIGTERM or SIGINT."""
    stopping = _stop_on_signal()
    node = start_node(settings, roles)
    while not stopping.wait(1.0):
        pass
    node.stop()
    return 0
