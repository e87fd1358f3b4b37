#!/usr/bin/env bash
# Mutation testing (mutmut 3) over receive/, store/, jobs/, inference/, results/, send/, audit/, admin/,
# dicomweb/, remote/, cli/ and net/, killed by the tests [tool.mutmut] in pyproject.toml selects. Outside
# CI: a full run takes hours. Issue 27's draws: `--sample 40` twice, each with a fresh seed (docs/testing.md).
#
#   bash scripts/mutation.sh                          # every mutant (hours)
#   bash scripts/mutation.sh "dicomnode.jobs.*"       # a subset (mutmut's mutant-name patterns)
#   bash scripts/mutation.sh --sample 40 [--seed S]   # S (printed; default: a fresh one, the time) draws 40 per package
#
# The full run and a subset print the score per package (killed / all, timeouts counted as killed). A
# sample prints, per package, its size, the score and a 95 % interval, and the names that survived;
# its names are kept in mutants/sample.txt; its "no tests" names (code only a process that a test starts
# reaches: the CLI, the node under serve) are then run by mutation_sample.py byhand. Surviving mutants
# get a test, or are listed with their reason in docs/testing.md. Run it with nice; MUTATION_CHILDREN
# (default 2) sets mutmut's workers.
set -euo pipefail
cd "$(dirname "$0")/.."
children="${MUTATION_CHILDREN:-2}"

if [[ "${1:-}" == "--sample" ]]; then
    per_package="${2:?--sample needs a number of mutants per package}"
    seed="$(date +%s)"
    if [[ "${3:-}" == "--seed" ]]; then seed="${4:?--seed needs a number}"; fi
    echo "mutation sample: $per_package per package, seed $seed"
    .venv/bin/python scripts/mutation_sample.py pick "$per_package" "$seed" mutants/sample.txt
    xargs -a mutants/sample.txt .venv/bin/mutmut run --max-children "$children" || true
    .venv/bin/python scripts/mutation_sample.py byhand mutants/sample.txt  # what only a started process reaches
    echo "mutation sample: $per_package per package, seed $seed"
    .venv/bin/python scripts/mutation_sample.py score mutants/sample.txt
    exit 0
fi

.venv/bin/mutmut run --max-children "$children" "$@" || true
.venv/bin/mutmut results --all true | .venv/bin/python -c '
import collections, re, sys
score = collections.defaultdict(collections.Counter)
for line in sys.stdin:
    match = re.match(r"\s*(dicomnode\.[\w.]+?)\.x\w*__mutmut_\d+: (\w[\w ]*)", line) or \
        re.match(r"\s*(dicomnode\.[\w.]+?)\.\w+__mutmut_\d+: (\w[\w ]*)", line)
    if not match:
        continue
    module, status = match.groups()
    parts = module.split(".")
    package = parts[1] + "/"
    score[package][status.strip()] += 1
print(f"{\"package\":<10} {\"mutants\":>8} {\"killed\":>8} {\"survived\":>9} {\"other\":>6} {\"score\":>7}")
for package, counts in sorted(score.items()):
    total = sum(counts.values())
    killed = counts["killed"] + counts["timeout"]
    other = total - killed - counts["survived"]
    print(f"{package:<10} {total:>8} {killed:>8} {counts[\"survived\"]:>9} {other:>6} {killed / total:>7.0%}")
'
