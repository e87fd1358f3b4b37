"""Prometheus metrics, from prometheus_client: the node's state read from the database at scrape time,
plus the admin layer's own counters. Everything registers into one :class:`CollectorRegistry` that
the caller passes in (no global registry), so that other parts (per-model inference metrics) can add
their collectors to the same ``/metrics``.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.audit.models import AuditRecord
from dicomnode.files import free_bytes
from dicomnode.jobs.models import Instance, Job, Study
from dicomnode.jobs.status import JobStatus, StudyState
from dicomnode.settings import Settings
from dicomnode.store.ingest import disk_guard


class NodeCollector(Collector):
    """Studies by state, jobs by status, instances, audit rows and the disk guard, read when scraped."""

    def __init__(self, settings: Settings, sessions: sessionmaker[Session]) -> None:
        self.settings = settings
        self.sessions = sessions

    def collect(self) -> Iterator[Metric]:
        with self.sessions() as session:
            studies = {s: n for s, n in session.execute(select(Study.state, func.count()).group_by(Study.state))}
            jobs = {s: n for s, n in session.execute(select(Job.status, func.count()).group_by(Job.status))}
            instances = session.scalar(select(func.count()).select_from(Instance)) or 0
            audit_rows = session.scalar(select(func.count()).select_from(AuditRecord)) or 0
        by_state = GaugeMetricFamily("dicomnode_studies", "Studies by state.", labels=["state"])
        for state in StudyState:
            by_state.add_metric([state.value], studies.get(state, 0))
        by_status = GaugeMetricFamily("dicomnode_jobs", "Jobs by status.", labels=["status"])
        for status in JobStatus:
            by_status.add_metric([status.value], jobs.get(status, 0))
        yield by_state
        yield by_status
        yield GaugeMetricFamily("dicomnode_instances", "Instances held in the spool.", value=instances)
        yield CounterMetricFamily("dicomnode_audit_rows", "Rows in the audit trail.", value=audit_rows)
        yield GaugeMetricFamily("dicomnode_disk_free_bytes", "Free space where the spool lives.",
                                value=free_bytes(self.settings.spool_dir))
        yield GaugeMetricFamily("dicomnode_accepting", "1 while the disk guard lets instances in.",
                                value=0 if disk_guard(self.settings) else 1)


class AdminMetrics:
    """The admin layer's counters, registered into ``registry``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.logins = Counter("dicomnode_admin_logins", "Admin logins by outcome.", ["outcome"], registry=registry)
        for outcome in ("success", "failure", "throttled"):
            self.logins.labels(outcome)


def node_registry(settings: Settings, sessions: sessionmaker[Session],
                  registry: CollectorRegistry | None = None) -> tuple[CollectorRegistry, AdminMetrics]:
    """``registry`` (a new one when None) with the node's collector and the admin counters in it."""
    registry = registry if registry is not None else CollectorRegistry()
    registry.register(NodeCollector(settings, sessions))
    return registry, AdminMetrics(registry)
