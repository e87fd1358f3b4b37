"""``dicomnode serve``: receiver, completeness sweep and worker in one process.

SIGTERM/SIGINT stop it cleanly: the SCP stops accepting, the sweep stops, the job in hand finishes (or,
after a hard kill, its lease runs out and it is requeued on the next start).
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
from dicomnode.admin.api import AdminContext, start_admin
from dicomnode.admin.config_store import runtime_rules
from dicomnode.admin.server import AdminServer
from dicomnode.audit.anchor import write_checkpoint
from dicomnode.audit.events import AuditEvent
from dicomnode.audit.syslog import Forwarder
from dicomnode.audit.trail import record
from dicomnode.db import make_engine, make_sessionmaker, session_scope
from dicomnode.inference.monitoring import ModelMetrics, recent_outputs
from dicomnode.inference.registry import Registry, RuntimeOptions, load_manifests
from dicomnode.jobs.completion import sweep
from dicomnode.jobs.repository import release_held, requeue_expired
from dicomnode.jobs.retention import purge
from dicomnode.jobs.routing import effective_rules
from dicomnode.log import extra
from dicomnode.migrate import upgrade
from dicomnode.pipeline import PipelineContext
from dicomnode.receive.handlers import ReceiveContext
from dicomnode.receive.scp import start_scp
from dicomnode.settings import Settings
from dicomnode.worker import Worker

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

    def stop(self) -> None:
        for server in self.servers:
            server.shutdown()
        if self.admin is not None:
            self.admin.shutdown()
            self.admin.server_close()
        self.scheduler.shutdown(wait=True)
        if self.worker is not None:
            self.worker.stop()
            release_held(self.ctx.sessions, self.worker.worker_id)
        with session_scope(self.ctx.sessions) as session:
            record(session, AuditEvent.APPLICATION_STOP, actor=self.settings.ae_title)
        _anchor(self.ctx)  # the head at shutdown: the stop row is the last one anchored
        if self.forwarder is not None:
            try:  # one last pass, so that the stop message goes out too when the repository is up
                self.forwarder.forward_pending()
            except OSError:
                pass  # it stays in the trail and goes out after the next start
            self.forwarder.stop()
        log.info("node stopped", extra=extra(stage="serve"))


def _retention(ctx: PipelineContext) -> None:
    try:
        purge(ctx.settings, ctx.sessions)
    except Exception:
        log.exception("retention purge failed", extra=extra(stage="retention"))


def _anchor(ctx: PipelineContext) -> None:
    try:
        write_checkpoint(ctx.sessions, ctx.settings.anchor_path)
    except Exception:
        log.exception("audit anchor checkpoint failed", extra=extra(stage="audit"))


def _maintenance(ctx: PipelineContext) -> None:
    try:
        requeue_expired(ctx.sessions, ctx.settings.retry_max_attempts)
        defaults = [m.default for m in ctx.registry.manifests.values()]
        rules = runtime_rules(ctx.settings, ctx.sessions, defaults)  # admin API changes apply at once
        sweep(ctx.sessions, ctx.settings.study_idle_seconds, rules, ctx.registry.manifests)
    except Exception:
        log.exception("sweep failed", extra=extra(stage="sweep"))


def start_node(settings: Settings) -> Node:
    """Migrate the database, then start SCP, sweep and worker; returns the running node."""
    settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    upgrade(settings.db_url)
    sessions = make_sessionmaker(make_engine(settings.db_url))
    registry = Registry(settings.models_dir, options=RuntimeOptions(
        device=settings.device, threads=settings.inference_threads, concurrency=settings.inference_concurrency))
    for folder, error in registry.errors.items():
        log.error("model not loaded: %s", error, extra=extra(stage="serve", model=folder))
    metrics = ModelMetrics(CollectorRegistry(auto_describe=True), registry.manifests)
    for manifest in registry.manifests.values():
        metrics.seed(manifest.id, recent_outputs(sessions, settings.results_dir, manifest))
    ctx = PipelineContext(settings=settings, sessions=sessions, registry=registry, metrics=metrics)
    rules = effective_rules(settings.rules, (m.default for m in registry.manifests.values()))
    requeue_expired(sessions, settings.retry_max_attempts)
    with session_scope(sessions) as session:
        record(session, AuditEvent.APPLICATION_START, actor=settings.ae_title, version=dicomnode.__version__,
               models=sorted(registry.manifests), rules=[r.name for r in rules])
    _anchor(ctx)
    servers = start_scp(ReceiveContext(settings=settings, sessions=sessions))
    scheduler = BackgroundScheduler()
    scheduler.add_job(_maintenance, "interval", seconds=settings.sweep_interval_seconds, args=[ctx],
                      max_instances=1, coalesce=True, id="sweep")
    scheduler.add_job(_anchor, "interval", seconds=settings.audit_anchor_seconds, args=[ctx],
                      max_instances=1, coalesce=True, id="audit-anchor")
    if settings.retention_days > 0:
        scheduler.add_job(_retention, "interval", seconds=settings.retention_sweep_seconds, args=[ctx],
                          max_instances=1, coalesce=True, id="retention")
    scheduler.start()
    admin = None
    if settings.admin_port:
        admin = start_admin(AdminContext(settings, sessions, models=tuple(sorted(registry.manifests)),
                                         registry=metrics.registry,
                                         default_rules=tuple(m.default for m in registry.manifests.values())))
    forwarder = None
    if settings.audit_repository:
        forwarder = Forwarder(settings, sessions)
        forwarder.start()
    worker = None
    if settings.start_worker:
        worker = Worker(ctx)
        worker.start()
    if settings.pacs is None:
        rejects_all = settings.require_known_callers and not settings.peers
        log.warning("no PACS configured (DICOMNODE_PACS): results cannot be sent%s",
                    ", and every caller is rejected" if rejects_all else "", extra=extra(stage="serve"))
    log.info("node listening", extra=extra(stage="serve", ae_title=settings.ae_title,
                                           port=settings.port if settings.plain_port_enabled else "off",
                                           tls_port=settings.tls_port or "off",
                                           models=",".join(sorted(registry.manifests))))
    return Node(settings=settings, servers=servers, scheduler=scheduler, worker=worker, ctx=ctx,
                forwarder=forwarder, admin=admin)


def _wait_for_signal() -> None:
    stopping = threading.Event()

    def _on_signal(signum: int, _frame: Any) -> None:
        log.info("signal %d: stopping", signum, extra=extra(stage="serve"))
        stopping.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    while not stopping.wait(1.0):
        pass


def serve(settings: Settings) -> int:
    """Run until SIGTERM or SIGINT; returns the exit code."""
    node = start_node(settings)
    _wait_for_signal()
    node.stop()
    return 0


def serve_web(settings: Settings) -> int:
    """``dicomnode web``: only the admin API and console, on the node's database, until SIGTERM."""
    if not settings.admin_port:
        log.error("admin_port is 0: set it to serve the admin API", extra=extra(stage="web"))
        return 2
    upgrade(settings.db_url)
    sessions = make_sessionmaker(make_engine(settings.db_url))
    defaults = tuple(m.default for m in load_manifests(settings.models_dir).values())
    server = start_admin(AdminContext(settings, sessions, models=None, default_rules=defaults))
    log.info("admin API listening", extra=extra(stage="web", port=server.port))
    _wait_for_signal()
    server.shutdown()
    server.server_close()
    return 0
