"""Who may add to a study: a study belongs to the STOW-RS sender that first stored it.

Its first ``StudySender`` row, written in the transaction that made the study, names the owner. The
``sender`` role may add to its own studies only. Storing into any other existing study (another sender's,
or one the PACS sent by C-STORE, which no sender owns) is refused with ``0xC213``: the answer (so the same
failure entry, Store Instances Response and HTTP status) that a sender gets for a study UID that nobody
has when the instance's Series or SOP Instance UID is already taken by another study. The answer says no
more than "a UID of this instance is taken": not by whom, not for which patient, and not whether the
Patient ID matched (ownership is checked before the patient). Admins may store into any study (without
becoming its owner). C-STORE ignores ownership (``sender`` None): the PACS sending into a study that a
sender created is the hospital's normal flow, and the study stays that sender's.

:func:`may_add` is asked before anything is written (:mod:`dicomnode.store.landing`), and again, with
:func:`claim`, in the transaction that records the instance (:mod:`dicomnode.store.committer`), which
catches what raced in meanwhile.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from dicomnode.jobs.models import Instance, Series, Study, StudySender
from dicomnode.store.index import InstanceMeta

NOT_OWNED = "the study is not the sender's (another sender's, or received by C-STORE)"


def study_owner(session: Session, study_uid: str) -> str | None:
    """The sender that owns the study: the first that stored it by STOW-RS (None: no sender, e.g. the PACS)."""
    return session.scalar(select(StudySender.user).join(Study, StudySender.study_id == Study.id)
                          .where(Study.study_uid == study_uid)
                          .order_by(StudySender.at, StudySender.user).limit(1))


def _others(session: Session, study_id: int, meta: InstanceMeta) -> bool:
    """Whether the study holds an instance other than ``meta``'s."""
    return session.scalar(select(Instance.id).join(Series, Instance.series_id == Series.id)
                          .where(Series.study_id == study_id, Instance.sop_instance_uid != meta.sop_instance_uid)
                          .limit(1)) is not None


def may_add(session: Session, meta: InstanceMeta, sender: str | None, admin: bool) -> bool:
    """Whether ``sender`` (None: a C-STORE) may store ``meta`` into its study, as the database holds it
    now: a study nobody has yet, or one holding only this instance, is the sender's to make."""
    if sender is None or admin:
        return True
    owner = study_owner(session, meta.study_uid)
    if owner is not None:
        return owner == sender
    study_id = session.scalar(select(Study.id).where(Study.study_uid == meta.study_uid))
    return study_id is None or not _others(session, study_id, meta)


def claim(session: Session, meta: InstanceMeta, sender: str | None) -> None:
    """With ``meta`` recorded in ``session``: a study that has no owner and holds only this instance (made
    by it) becomes ``sender``'s (admins too become the owner of what they make)."""
    if sender is None or study_owner(session, meta.study_uid) is not None:
        return
    study_id = session.scalar(select(Study.id).where(Study.study_uid == meta.study_uid))
    if study_id is not None and not _others(session, study_id, meta):
        session.add(StudySender(study_id=study_id, user=sender))
