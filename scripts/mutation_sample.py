"""A seeded random sample of mutmut 3 mutants per package, and its score (scripts/mutation.sh --sample).

    python scripts/mutation_sample.py pick N SEED FILE  # generate the mutants, write N names per package
    python scripts/mutation_sample.py byhand FILE   # run FILE's "no tests" names in the processes tests start
    python scripts/mutation_sample.py score FILE    # score the names in FILE from mutmut's results
    python scripts/mutation_sample.py score FILE EQUIVALENT  # ... setting aside the survivors EQUIVALENT lists

Mutants are generated with mutmut's own steps (the ones `mutmut run` starts with), listed from its
``mutants/**/*.meta`` files, grouped by package and drawn with ``random.Random(SEED)``, so that a seed
names the same sample again. The score is killed / sampled (timeouts count as killed) with a 95 %
Wilson interval: a sample estimates the package's score, it does not measure it.
"""

from __future__ import annotations

import ast
import collections
import json
import math
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

KILLED = {"killed", "timeout"}

# What a package does only in a process that a test starts (the node under ``serve``, the edge's remote round
# trip, the few CLI commands still run as processes; most CLI tests run the command in pytest's process,
# tests/support/cli.py) mutmut 3's first pass cannot see: it maps tests to a function by the calls made
# in the pytest process, so such a mutant is "no tests" and never run. ``byhand`` runs each of them against
# these tests, the mutant switched on in every process (MUTANT_UNDER_TEST and PYTHONPATH, naming the
# mutated copy, are inherited), stopping at the first failure: a failure is a kill, a pass a survivor.
BY_HAND = {
    "cli/": ["tests/integration/test_cli_surface.py", "tests/integration/test_cli.py",
             "tests/integration/test_models_cli.py", "tests/integration/test_model_availability.py",
             "tests/integration/test_audit_trail.py", "tests/integration/test_pacs_counts.py",
             "tests/integration/test_admin.py", "tests/integration/test_syslog.py", "tests/e2e/test_roles.py"],
    "remote/": ["tests/e2e/test_edge_cloud.py"],
}
BY_HAND_DEFAULT = ["tests/e2e/test_promises.py", "tests/e2e/test_site_models_e2e.py", "tests/e2e/test_node.py"]
# Functions that run once per process (at import, or a process-wide install): mutmut forks each mutant's
# run from a process in which they ran already, unmutated, so their survivors are run afresh here too.
ONCE = {
    "dicomnode.net.reactor.x__patch": ["tests/integration/test_reactor.py", "tests/integration/test_receive.py"],
    "dicomnode.jobs.models.x__enum": ["tests/unit/test_status.py"],
    "dicomnode.store.index.x__find_known": ["tests/integration/test_receive.py"],
    "dicomnode.net.uids.x_cached": ["tests/unit/test_uids.py"],  # the cache is made once, at install
    "dicomnode.net.uids.x_install": ["tests/unit/test_uids.py", "tests/integration/test_receive.py"],
}
BY_HAND_TIMEOUT = 1200  # seconds; beyond it, a timeout (counted as a kill, as mutmut counts its own)


def package(name: str) -> str:
    """``dicomnode.receive.handlers.x__store__mutmut_3`` -> ``receive/``; ``dicomnode.net.tls...`` -> ``net/``."""
    return name.split(".")[1] + "/"


def all_names() -> list[str]:
    names: list[str] = []
    for meta in sorted(Path("mutants").rglob("*.meta")):
        names.extend(json.loads(meta.read_text())["exit_code_by_key"])
    return sorted(names)


def generate() -> None:
    """The first steps of ``mutmut run`` (mutmut 3.8's own functions: internal, so pinned by use)."""
    from mutmut import __main__ as mutmut

    mutmut.copy_src_dir()
    mutmut.copy_also_copy_files()
    mutmut.setup_source_paths()
    mutmut.create_mutants(2)


def pick(per_package: int, seed: int) -> list[str]:
    by_package: dict[str, list[str]] = collections.defaultdict(list)
    for name in all_names():
        by_package[package(name)].append(name)
    rng = random.Random(seed)
    chosen: list[str] = []
    for key in sorted(by_package):
        names = by_package[key]
        chosen.extend(sorted(rng.sample(names, min(per_package, len(names)))))
        print(f"{key:<10} {len(names):>6} mutants, {min(per_package, len(names))} sampled", file=sys.stderr)
    return chosen


def wilson(killed: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return 0.0, 1.0
    p = killed / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def statuses() -> dict[str, str]:
    from mutmut.stats import status_by_exit_code

    found: dict[str, str] = {}
    for meta in Path("mutants").rglob("*.meta"):
        for name, code in json.loads(meta.read_text())["exit_code_by_key"].items():
            found[name] = status_by_exit_code[code]
    return found


def equivalents(path: Path | None) -> dict[str, str]:
    """Mutant name -> why it is equivalent, from ``path`` (``NAME  reason`` a line, ``#`` comments): a name
    holds while its function is unchanged, and only a survivor is set aside."""
    listed: dict[str, str] = {}
    for line in path.read_text().splitlines() if path is not None else []:
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, reason = line.strip().partition(" ")
            listed[name] = reason.strip()
    return listed


def score(sample_file: Path, equivalent_file: Path | None = None) -> None:
    found = statuses()
    equivalent = equivalents(equivalent_file)
    counts: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    survivors: list[str] = []
    set_aside: list[str] = []
    for name in sample_file.read_text().split():
        status = found.get(name, "not checked")
        if status == "survived" and name in equivalent:
            status = "equivalent"
            set_aside.append(f"  {name}: {equivalent[name]}")
        counts[package(name)][status] += 1
        if status == "survived":
            survivors.append(name)
    print(f"{'package':<10} {'sampled':>7} {'killed':>6} {'survived':>8} {'equiv':>5} {'other':>5} {'score':>6}"
          "  95 % interval")
    for key, tally in sorted(counts.items()):
        done = sum(n for status, n in tally.items() if status not in ("not checked", "equivalent"))
        killed = sum(tally[s] for s in KILLED)
        other = done - killed - tally["survived"]
        low, high = wilson(killed, done)
        rate = f"{killed / done:.0%}" if done else "-"
        unrun = f"  ({tally['not checked']} not run)" if tally["not checked"] else ""
        print(f"{key:<10} {done:>7} {killed:>6} {tally['survived']:>8} {tally['equivalent']:>5} {other:>5} "
              f"{rate:>6}  {low:.0%} to {high:.0%}{unrun}")
    if set_aside:
        print("\nset aside as equivalent:")
        print("\n".join(set_aside))
    if survivors:
        print("\nsurvivors (mutmut show NAME):")
        print("\n".join(f"  {name}" for name in survivors))


def _pytest(files: list[str], mutant: str, more_env: dict[str, str] | None = None) -> int:
    root = Path("mutants").resolve()
    env = {**os.environ, "MUTANT_UNDER_TEST": mutant, "PYTHONPATH": str(root), **(more_env or {})}
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-m", "not slow", *files]
    try:
        return subprocess.run(command, cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              timeout=BY_HAND_TIMEOUT).returncode
    except subprocess.TimeoutExpired:
        return 36  # mutmut's exit code for a timeout


def _function(name: str) -> str:
    """``dicomnode.net.reactor.x__patch__mutmut_42`` -> ``dicomnode.net.reactor.x__patch``."""
    return name.rsplit("__mutmut_", 1)[0]


def _tests(name: str) -> list[str]:
    return ONCE.get(_function(name)) or BY_HAND.get(package(name), BY_HAND_DEFAULT)


def by_hand(sample_file: Path) -> None:
    """Run the sample's "no tests" names (and the survivors of :data:`BY_HAND` packages and of :data:`ONCE`
    functions) against the tests that start processes, or in a fresh one; keep each verdict in mutmut's own
    results (``mutants/**/*.meta``) and in ``mutants/byhand.json``.

    Each test file is first run without a mutant (it must pass) under coverage in every process it starts
    (``COVERAGE_PROCESS_START``, coverage's subprocess hook), and a mutant then runs only the files that
    ran its function's original body: what mutmut's first pass does in pytest's process, across processes.
    A mutant whose function none of them ran stays "no tests"."""
    found = statuses()
    names = [name for name in sample_file.read_text().split()
             if found.get(name) == "no tests" or (found.get(name) == "survived" and (
                 package(name) in BY_HAND or _function(name) in ONCE))]
    files = sorted({file for name in names for file in _tests(name)})
    ran = {file: _ran(file) for file in files}  # the tests must pass without a mutant first
    for name in names:
        chosen = [file for file in _tests(name) if _body(name) & ran[file].get(_source(name), set())]
        if not chosen:
            print(f"byhand {name}: no test file runs it", file=sys.stderr)
            continue
        started = time.monotonic()
        code = _pytest(chosen, name)
        _keep(name, code, round(time.monotonic() - started, 1))
        print(f"byhand {name}: exit {code} ({len(chosen)} of {len(_tests(name))} files)", file=sys.stderr)


def _ran(file: str) -> dict[str, set[int]]:
    """Lines of the mutated copy that ``file`` runs without a mutant, in its process and every process it
    starts (by source path); raises SystemExit when it fails."""
    folder = Path("mutants/byhand-coverage").resolve() / file.replace("/", "_")
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    rc = folder / "coveragerc"
    rc.write_text(f"[run]\nparallel = true\ndata_file = {folder}/.coverage\n"
                  f"source = {Path('mutants/dicomnode').resolve()}\n")
    if (code := _pytest([file], "", {"COVERAGE_PROCESS_START": str(rc)})) != 0:
        raise SystemExit(f"byhand: {file} fails without a mutant (exit {code})")
    import coverage

    combined = coverage.Coverage(data_file=str(folder / ".coverage"), config_file=str(rc))
    combined.combine(data_paths=[str(folder)], strict=True)
    data = combined.get_data()
    return {path: set(data.lines(path) or ()) for path in data.measured_files()}


def _source(name: str) -> str:
    """``dicomnode.cli.main.x_f__mutmut_3`` -> the mutated copy's path of ``dicomnode/cli/main.py``."""
    module = name.rsplit(".", 1)[0]
    return str(Path("mutants", *module.split(".")).resolve().with_suffix(".py"))


def _body(name: str) -> set[int]:
    """The lines of the original body of the mutant's function in the mutated copy (not its ``def``: that
    one runs at import)."""
    original = name.rsplit(".", 1)[1].rsplit("__mutmut_", 1)[0] + "__mutmut_orig"
    for node in ast.walk(ast.parse(Path(_source(name)).read_text())):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == original:
            return set(range(node.body[0].lineno, (node.end_lineno or node.body[0].lineno) + 1))
    return set()


def _keep(name: str, code: int, seconds: float) -> None:
    """One verdict, kept at once (a long run may be cut short): in byhand.json and in mutmut's results."""
    log = Path("mutants/byhand.json")
    kept = json.loads(log.read_text()) if log.exists() else {}
    log.write_text(json.dumps({**kept, name: {"exit_code": code, "seconds": seconds}}, indent=1))
    for meta in Path("mutants").rglob("*.meta"):
        data = json.loads(meta.read_text())
        if name in data["exit_code_by_key"]:
            data["exit_code_by_key"][name] = code
            meta.write_text(json.dumps(data))
            return


def main(argv: list[str]) -> None:
    if argv[:1] == ["pick"] and len(argv) == 4:
        generate()  # mutmut prints each file it mutates
        Path(argv[3]).write_text("\n".join(pick(int(argv[1]), int(argv[2]))) + "\n")
    elif argv[:1] == ["byhand"] and len(argv) == 2:
        by_hand(Path(argv[1]))
    elif argv[:1] == ["score"] and len(argv) in (2, 3):
        score(Path(argv[1]), Path(argv[2]) if len(argv) == 3 else None)
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
