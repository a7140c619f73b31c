"""Check a feature store for what several writers, crashes or older versions may have left, and repair it.

For every model version under a store: committed segments that fail their marker's check (damaged),
segments the catalog lists that are not committed (missing), committed segments the catalog does not
reference (unreferenced: losers' duplicates cannot be, but interrupted runs and replaced segments are),
attempt folders that no marker names (a writer that lost the commit or crashed), segment folders without
a marker, and temporary files of a crashed write. ``repair`` removes what is older than ``min_age_s`` —
a running refresh's fresh work is younger — while holding the version's lease, so no refresh starts
meanwhile; a version whose lease another run holds is skipped and said so.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field

import fsspec

from clothret.errors import StoreBusy
from clothret.store.cas import is_temporary
from clothret.store.catalog import CATALOG, read_catalog
from clothret.store.feature_store import ATTEMPTS, MARKER, check_marker, load_marker, segments_url
from clothret.store.lease import LEASE, hold_lease, lease_blocks, read_lease
from clothret.store.writer import utc_now

logger = logging.getLogger(__name__)

DAMAGED = "damaged"  # committed, fails its marker's check
MISSING = "missing"  # listed by the catalog, not committed
UNREFERENCED = "unreferenced"  # committed, not in the catalog
STRAY_ATTEMPT = "stray_attempt"  # an attempt folder its segment's marker does not name
NO_MARKER = "no_marker"  # a segment folder without a marker
TEMPORARY = "temporary"  # a temporary file of a crashed write
REMOVABLE = (DAMAGED, UNREFERENCED, STRAY_ATTEMPT, NO_MARKER, TEMPORARY)


@dataclass
class Finding:
    """One thing found: its kind, where, why, how old (newest file), and what repair did with it."""

    version: str
    kind: str
    url: str
    reason: str
    age_s: float | None = None
    removed: bool = False
    skipped: str = ""

    def line(self) -> str:
        age = "" if self.age_s is None else f", {self.age_s:.0f} s old"
        done = " [removed]" if self.removed else f" [kept: {self.skipped}]" if self.skipped else ""
        return f"{self.kind}: {self.url} ({self.reason}{age}){done}"


@dataclass
class VerifyReport:
    """What :func:`verify_store` found and did."""

    store_url: str
    repair: bool
    min_age_s: float
    versions: list[str] = field(default_factory=list)
    segments: int = 0
    findings: list[Finding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def problems(self) -> list[Finding]:
        """Findings still there (not removed)."""
        return [f for f in self.findings if not f.removed]

    @property
    def clean(self) -> bool:
        return not self.problems

    def lines(self) -> list[str]:
        head = (f"store {self.store_url}: {len(self.versions)} model version(s), {self.segments} segment folder(s), "
                f"{len(self.findings)} finding(s), {len(self.problems)} left")
        return [head, *self.notes, *(f"  {f.version}: {f.line()}" for f in self.findings)]


def _mtime(info: dict) -> float | None:
    for key in ("mtime", "LastModified", "created"):
        value = info.get(key)
        if isinstance(value, dt.datetime):
            return (value if value.tzinfo else value.replace(tzinfo=dt.UTC)).timestamp()
        if isinstance(value, (int, float)):
            return float(value)
    return None


def _age(found: dict, now: float) -> float | None:
    times = [t for t in (_mtime(info) for info in found.values()) if t is not None]
    return None if not times else max(0.0, now - max(times))


def _under(found: dict, prefix: str) -> dict:
    prefix = prefix.rstrip("/") + "/"
    return {p: info for p, info in found.items() if p.startswith(prefix)}


def _versions(fs: fsspec.AbstractFileSystem, root: str) -> list[str]:
    if not fs.exists(root):
        return []
    out = []
    for child in fs.ls(root, detail=False):
        name = child.rstrip("/").rsplit("/", 1)[-1]
        if fs.exists(f"{child}/segments") or fs.exists(f"{child}/{CATALOG}") or fs.exists(f"{child}/{LEASE}"):
            out.append(name)
    return sorted(out)


def _segment_findings(version: str, seg_url: str, seg_path: str, found: dict, referenced: bool, now: float):
    """The findings of one segment folder, each with the path repair would remove."""
    marker, problem = load_marker(seg_url)
    age = _age(found, now)
    if marker is None and problem is None:
        return [(Finding(version, NO_MARKER, seg_url, "a segment folder without a commit marker: a writer that "
                         "crashed, or one still writing", age), seg_path)]
    out = []
    reason = problem or check_marker(seg_url, marker, found)
    if reason is not None:
        out.append((Finding(version, DAMAGED, seg_url, reason + ("; the catalog lists it" if referenced else ""),
                            age), seg_path))
        return out
    if not referenced:
        out.append((Finding(version, UNREFERENCED, seg_url, "committed, not in the catalog", age), seg_path))
    named = marker.get("attempt") if marker.get("format") == 2 else None
    attempts_path = f"{seg_path}/{ATTEMPTS}"
    attempts = {p[len(attempts_path) + 1:].split("/", 1)[0] for p in _under(found, attempts_path)}
    for attempt in sorted(attempts - {named}):
        path = f"{attempts_path}/{attempt}"
        out.append((Finding(version, STRAY_ATTEMPT, f"{seg_url}/{ATTEMPTS}/{attempt}",
                            "an attempt its marker does not name: a writer that lost the commit or crashed",
                            _age(_under(found, path), now)), path))
    for path, info in found.items():
        name = path.rsplit("/", 1)[-1]
        if is_temporary(name):
            out.append((Finding(version, TEMPORARY, f"{seg_url}/{name}", "a temporary file of a crashed write",
                                _age({path: info}, now)), path))
    return out


def _remove(fs: fsspec.AbstractFileSystem, finding: Finding, path: str, seg_path: str) -> None:
    try:
        if finding.kind in (DAMAGED, UNREFERENCED):  # the marker first: readers see "not committed", not a part
            try:
                fs.rm_file(f"{seg_path}/{MARKER}")
            except FileNotFoundError:
                pass
        fs.rm(path, recursive=True)
        finding.removed = True
    except FileNotFoundError:
        finding.removed = True
    except OSError as exc:
        finding.skipped = f"could not remove it: {exc!r}"


def _verify_version(report: VerifyReport, fs, store_url: str, version: str, *, repair: bool, now: float) -> None:
    try:
        catalog = read_catalog(store_url, version)
    except ValueError as exc:
        report.findings.append(Finding(version, "catalog", f"{store_url.rstrip('/')}/{version}/{CATALOG}", str(exc)))
        return  # without the catalog nothing can be called unreferenced
    root = fsspec.core.url_to_fs(segments_url(store_url, version))[1]
    folders = [p.rstrip("/") for p in fs.ls(root, detail=False)] if fs.exists(root) else []
    report.segments += len(folders)
    listed = set()
    found_all = fs.find(root, detail=True) if folders else {}
    pending = []
    for seg_path in sorted(folders):
        seg_id = seg_path.rsplit("/", 1)[-1]
        listed.add(seg_id)
        seg_url = f"{segments_url(store_url, version)}/{seg_id}"
        found = _under(found_all, seg_path)
        pending += [(f, p, seg_path) for f, p in
                    _segment_findings(version, seg_url, seg_path, found, seg_id in catalog.segments, now)]
    for seg_id in catalog.segments:
        if seg_id not in listed:
            report.findings.append(Finding(version, MISSING, f"{segments_url(store_url, version)}/{seg_id}",
                                           "the catalog lists it but it is not there: the next refresh re-embeds "
                                           "its images"))
    report.findings += [f for f, _, _ in pending]
    if not repair or not pending:
        return
    lease = read_lease(store_url, version)
    if lease_blocks(lease):
        note = f"version {version}: nothing removed, it is being refreshed by {lease.describe()} (lease until " \
               f"{lease.expires})"
        report.notes.append(note)
        for finding, _, _ in pending:
            finding.skipped = "the version is leased by another run"
        return
    try:
        with hold_lease(store_url, version, holder="verify"):
            for finding, path, seg_path in pending:
                if finding.age_s is None or finding.age_s < report.min_age_s:
                    finding.skipped = f"younger than {report.min_age_s:.0f} s" if finding.age_s is not None \
                        else "its age is unknown"
                    continue
                _remove(fs, finding, path, seg_path)
    except StoreBusy as exc:
        report.notes.append(f"version {version}: nothing removed: {exc}")
        for finding, _, _ in pending:
            finding.skipped = finding.skipped or "the version is leased by another run"


def verify_store(store_url: str, *, repair: bool = False, min_age_s: float = 3600.0) -> VerifyReport:
    """Check every model version under a store; with ``repair`` remove what is found and older than
    ``min_age_s`` (never under another run's lease). Segments the catalog lists are never removed unless
    damaged."""
    if min_age_s < 0:
        raise ValueError(f"min_age_s must be >= 0 seconds, got {min_age_s}")
    fs, root = fsspec.core.url_to_fs(store_url)
    report = VerifyReport(store_url, repair, min_age_s)
    now = utc_now().timestamp()
    for version in _versions(fs, root):
        report.versions.append(version)
        _verify_version(report, fs, store_url, version, repair=repair, now=now)
    logger.info("verified %s: %d finding(s), %d left", store_url, len(report.findings), len(report.problems))
    return report
